"""Finding and reading raw-log partitions (CSV, Parquet, JSON Lines) into one typed form.

Every reader returns the same frame: the stream's columns, typed as in offline_data/schemas.py, plus

* ``_file`` (str) and ``_row`` (int64, 0-based data row in the file): where the row came from;
* ``_raw`` (str): the row as read, as JSON, for the quarantine;
* ``_bad_<col>`` (bool) per column: a value was present but could not be parsed as the column's type;
* ``_truncated`` (bool): the row is the last line of a text file that does not end with a newline.

File-level problems (missing file or column, a column of the wrong type, an empty file) raise
:class:`RawLogError`, whose message names the file and the column. Row-level problems are left to the
validator, which quarantines the row with a reason.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from offline_data.schemas import STREAMS, TS_FORMAT, Stream

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_GARBAGE_TOKENS = r"(-?NaN|-?Infinity|-?inf|nan)"


class RawLogError(ValueError):
    """A raw-log file cannot be used at all. The message names the file and, where it applies, the column."""

    def __init__(self, path: str | Path, column: str | None, problem: str) -> None:
        self.path, self.column, self.problem = str(path), column, problem
        where = f"{path}: column '{column}'" if column else f"{path}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class RawFile:
    """One file of one stream's day partition."""

    stream: str
    date: str  # YYYY-MM-DD, from the partition folder name
    path: Path
    fmt: str  # csv, parquet or jsonl
    size: int
    mtime_ns: int

    @property
    def rel(self) -> str:
        """Path relative to RAW/ (stable across machines, used in manifests and the quarantine)."""
        return f"{self.stream}/date={self.date}/{self.path.name}"


def discover(raw: Path) -> dict[str, dict[str, list[RawFile]]]:
    """All partitions under ``raw``: ``{date: {stream: [files]}}``, dates sorted.

    Raises:
        RawLogError: ``raw`` is missing, holds no partition at all, or a day lacks one of the streams.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise RawLogError(raw, None, "raw-log folder not found")
    days: dict[str, dict[str, list[RawFile]]] = {}
    for name in STREAMS:
        sdir = raw / name
        if not sdir.is_dir():
            continue
        for part in sorted(sdir.glob("date=*")):
            date = part.name.split("=", 1)[1]
            for f in sorted(part.iterdir()):
                fmt = FORMATS.get(f.suffix.lower())
                if fmt is None or not f.is_file():
                    continue
                st = f.stat()
                days.setdefault(date, {}).setdefault(name, []).append(
                    RawFile(name, date, f, fmt, st.st_size, st.st_mtime_ns)
                )
    if not days:
        raise RawLogError(
            raw,
            None,
            f"empty input: no partitions <stream>/date=YYYY-MM-DD/*.{{csv,parquet,jsonl}} "
            f"for any of the streams {', '.join(STREAMS)}",
        )
    for date, streams in days.items():
        for name in STREAMS:
            if name not in streams:
                raise RawLogError(
                    raw / name / f"date={date}",
                    None,
                    f"missing partition: day {date} has {', '.join(sorted(streams))} but no {name}",
                )
    return dict(sorted(days.items()))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# Other RFC 3339 spellings, tried only where the documented format fails: (format, carries an offset).
_TS_FALLBACKS = (
    ("%Y-%m-%dT%H:%M:%S%.fZ", False),
    ("%Y-%m-%dT%H:%M:%SZ", False),
    ("%Y-%m-%dT%H:%M:%S%.f%:z", True),
    ("%Y-%m-%dT%H:%M:%S%:z", True),
)


def _typed(kind: str, s: pl.Expr, fast: bool) -> pl.Expr:
    """Parse strings of one kind; ``fast`` = the documented format only (the common case)."""
    if kind == "timestamp":
        if fast:
            return s.str.to_datetime(TS_FORMAT, time_zone="UTC", strict=False, time_unit="ms")
        parsed = []
        for fmt, offset in _TS_FALLBACKS:
            t = s.str.to_datetime(fmt, strict=False, time_unit="ms")
            parsed.append(t.dt.convert_time_zone("UTC").dt.replace_time_zone(None) if offset else t)
        return pl.coalesce(parsed).dt.replace_time_zone("UTC")
    if kind == "float":
        return s.cast(pl.Float64, strict=False)
    if kind == "int":
        return s.cast(pl.Int64, strict=False)
    if kind == "bool":
        low = s.str.to_lowercase()
        return pl.when(low.is_in(["true", "1"])).then(True).when(low.is_in(["false", "0"])).then(False)
    return s


def _parse_text(stream: Stream, df: pl.DataFrame) -> pl.DataFrame:
    """String columns -> typed columns plus ``_bad_<col>`` flags (present but unparseable).

    The documented format is parsed for all rows at once; only values that fail get a second, slower try
    (surrounding spaces, other RFC 3339 spellings of the timestamp).
    """
    raw = pl.struct([pl.col(c.name) for c in stream.columns]).struct.json_encode().alias("_raw")
    empty = {c.name: pl.col(c.name).is_null() | (pl.col(c.name) == "") for c in stream.columns}
    out = df.with_columns(
        raw,
        *(
            pl.when(empty[c.name])
            .then(None)
            .otherwise(_typed(c.kind, pl.col(c.name), True))
            .alias(f"_t_{c.name}")
            for c in stream.columns
        ),
    )
    retry = [c for c in stream.columns if c.kind != "string"]
    failed = out.select(
        pl.any_horizontal((~empty[c.name] & pl.col(f"_t_{c.name}").is_null()) for c in retry)
        if retry
        else pl.lit(False)
    ).to_series()
    if failed.any():  # slow path, on the failing rows only
        idx = pl.Series("_i", failed.arg_true())
        slow = out[idx].select(
            *(
                pl.coalesce(
                    pl.col(f"_t_{c.name}"), _typed(c.kind, pl.col(c.name).str.strip_chars(), False)
                ).alias(f"_t_{c.name}")
                for c in retry
            )
        )
        out = (
            out.with_columns(pl.int_range(pl.len()).alias("_i"))
            .update(slow.with_columns(idx), on="_i", include_nulls=True)
            .drop("_i")
        )
    return (
        out.with_columns(
            *(
                (~empty[c.name] & pl.col(f"_t_{c.name}").is_null()).alias(f"_bad_{c.name}")
                for c in stream.columns
            ),
        )
        .drop(stream.names)
        .rename({f"_t_{c}": c for c in stream.names})
    )


def _check_header(f: RawFile, stream: Stream, present: list[str]) -> None:
    for c in stream.columns:
        if c.name not in present:
            raise RawLogError(
                f.path, c.name, f"missing column (stream {stream.name} needs: {', '.join(stream.names)})"
            )


def _read_csv(f: RawFile, stream: Stream) -> pl.DataFrame:
    if f.size == 0:
        raise RawLogError(f.path, None, "empty input: the file is empty (no header, no rows)")
    df = pl.read_csv(
        f.path, infer_schema=False, row_index_name="_row", quote_char='"', truncate_ragged_lines=True
    )
    _check_header(f, stream, df.columns)
    return _parse_text(stream, df.select("_row", *stream.names))


def _read_jsonl(f: RawFile, stream: Stream) -> pl.DataFrame:
    if f.size == 0:
        raise RawLogError(f.path, None, "empty input: the file is empty")
    lines = pl.scan_csv(
        f.path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        infer_schema=False,
        new_columns=["line"],
        row_index_name="_row",
    )
    # Bare NaN / Infinity (as Python's json writes them) are not JSON: quote them so that they reach the
    # validator as values, like any other non-finite number.
    fixed = pl.col("line").str.replace_all(r"(:\s*)" + _GARBAGE_TOKENS + r"(\s*[,}])", '$1"$2"$3')
    dtype = pl.Struct({c.name: pl.String for c in stream.columns})
    lf = lines.with_columns(fixed.alias("line"))
    try:
        decoded = lf.with_columns(pl.col("line").str.json_decode(dtype)).unnest("line").collect()
    except pl.exceptions.ComputeError:
        decoded = _decode_lines_slowly(lf.collect(), stream)
    keys = _json_keys_present(decoded, stream)
    _check_header(f, stream, keys)
    return _parse_text(stream, decoded.select("_row", *stream.names))


def _decode_lines_slowly(lines: pl.DataFrame, stream: Stream) -> pl.DataFrame:
    """Line-by-line fallback when some line is not JSON at all; such a line decodes to all-empty values."""
    import json

    out: dict[str, list] = {c: [] for c in stream.names}
    for line in lines["line"]:
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError
        except (ValueError, TypeError):
            obj = {}
        for c in stream.names:
            v = obj.get(c)
            out[c].append(None if v is None else (json.dumps(v) if not isinstance(v, str) else v))
    return pl.DataFrame({"_row": lines["_row"], **out}, schema_overrides={c: pl.String for c in stream.names})


def _json_keys_present(df: pl.DataFrame, stream: Stream) -> list[str]:
    if df.height == 0:
        return list(stream.names)
    counts = df.select(pl.col(c).is_not_null().any() for c in stream.names).row(0)
    return [c for c, seen in zip(stream.names, counts, strict=True) if seen]


def _read_parquet(f: RawFile, stream: Stream) -> pl.DataFrame:
    try:
        lf = pl.scan_parquet(f.path, row_index_name="_row")
        schema = lf.collect_schema()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a file-level error
        raise RawLogError(f.path, None, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    _check_header(f, stream, schema.names())
    exprs, flags = [], []
    for c in stream.columns:
        dt = schema[c.name]
        col = pl.col(c.name)
        if c.kind == "timestamp":
            if dt == pl.String:
                typed = col.str.to_datetime(TS_FORMAT, time_zone="UTC", strict=False, time_unit="ms")
            elif isinstance(dt, pl.Datetime):
                typed = (
                    col.dt.replace_time_zone("UTC")
                    if dt.time_zone is None
                    else col.dt.convert_time_zone("UTC")
                )
                typed = typed.dt.cast_time_unit("ms")
            else:
                raise RawLogError(
                    f.path, c.name, f"wrong type {dt}, expected a timestamp or an RFC 3339 string"
                )
        elif c.kind in ("float", "int"):
            if not dt.is_numeric():
                raise RawLogError(f.path, c.name, f"wrong type {dt}, expected a number ({c.kind})")
            typed = col.cast(pl.Float64 if c.kind == "float" else pl.Int64, strict=False)
        elif c.kind == "bool":
            if dt != pl.Boolean:
                raise RawLogError(f.path, c.name, f"wrong type {dt}, expected bool")
            typed = col
        else:
            typed = col.cast(pl.String)
        exprs.append(typed.alias(c.name))
        flags.append((col.is_not_null() & typed.is_null()).alias(f"_bad_{c.name}"))
    raw = pl.struct([pl.col(c).cast(pl.String) for c in stream.names]).struct.json_encode().alias("_raw")
    return lf.select("_row", *stream.names).with_columns(raw).with_columns(*exprs, *flags).collect()


def read_raw(f: RawFile) -> pl.DataFrame:
    """One raw file as the typed frame described in the module docstring (one day partition file: the
    reader scans it once; memory is bounded by the partition, never by the number of days)."""
    stream = STREAMS[f.stream]
    if not f.path.is_file():
        raise RawLogError(f.path, None, "file not found")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[f.fmt]
    df = reader(f, stream)
    truncated = f.fmt != "parquet" and not _ends_with_newline(f.path)
    last = pl.col("_row") == pl.col("_row").max()
    return df.with_columns(
        pl.col("_row").cast(pl.Int64),
        pl.lit(f.rel).alias("_file"),
        (last & truncated).alias("_truncated"),
    )


def check_types(df: pl.DataFrame, f_paths: dict[str, Path], stream: Stream) -> None:
    """A column none of whose present values parse is of the wrong type: an error, not a quarantine."""
    for c in stream.columns:
        stats = df.group_by("_file").agg(
            present=pl.col(c.name).is_not_null().sum() + pl.col(f"_bad_{c.name}").sum(),
            bad=pl.col(f"_bad_{c.name}").sum(),
            example=pl.col("_raw").filter(pl.col(f"_bad_{c.name}")).first(),
        )
        wrong = stats.filter(
            (pl.col("bad") > 0) & (pl.col("bad") == pl.col("present")) & (pl.col("present") > 1)
        )
        if wrong.height:
            row = wrong.row(0, named=True)
            raise RawLogError(
                f_paths.get(row["_file"], row["_file"]),
                c.name,
                f"wrong type: no value parses as {c.kind} (first row: {row['example']})",
            )
