"""Finding and reading raw-log partitions (CSV, Parquet, JSON Lines) into one typed form.

Every reader returns the same frame: the stream's columns, typed as in offline_data/schemas.py, plus

* ``_file`` (str) and ``_row`` (int64, 0-based data row in the file): where the row came from;
* ``_raw`` (str): the row's values as read, as JSON, for the quarantine;
* ``_off``, ``_len`` (int64): text formats: where the row's exact bytes are in the file (without the
  newline; :func:`line_bytes` reads them back for the quarantine); null for Parquet;
* ``_defect`` (str): a problem of the row as a whole, or null: ``bad_encoding`` (bytes that are not
  UTF-8), ``too_few_fields`` / ``too_many_fields`` (a CSV row with fewer or more fields than the header;
  a blank line has none), ``malformed_row`` (a CSV row whose quotes do not close), ``not_json`` (a JSON
  Lines line that is not a JSON object);
* ``_bad_<col>`` (bool) per column: a value was present but could not be parsed as the column's type;
* ``_truncated`` (bool): the row is the last line of a text file that does not end with a newline.

A text row is one line: a quoted CSV field may not hold a newline. File-level problems (a missing file or
column, a column of the wrong type, an empty or unreadable file, a partition folder that is not a date)
raise :class:`RawLogError`, whose message names the file and the column. Row-level problems are left to
the validator, which quarantines the row with a reason and its original bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from envs.outputs import OutputKind
from envs.outputs import sha256_file as file_sha256
from offline_data.schemas import STREAMS, TS_FORMAT, Stream

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_GARBAGE_TOKENS = r"(-?NaN|-?Infinity|-?inf|nan)"
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
# A raw-log folder: RAW/site.yaml and RAW/<stream>/date=YYYY-MM-DD/ (one is enough to recognise it).
RAW_OUTPUT = OutputKind(
    "raw logs (site.yaml, <stream>/date=YYYY-MM-DD/)", ("site.yaml", *STREAMS, "_defects"), any_entry=True
)
ROW_DEFECTS = ("bad_encoding", "too_few_fields", "too_many_fields", "malformed_row", "not_json")


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
    if raw.exists() and not raw.is_dir():
        raise RawLogError(raw, None, "is a file; the raw logs are a folder (RAW/<stream>/date=YYYY-MM-DD/)")
    if not raw.is_dir():
        raise RawLogError(raw, None, "raw-log folder not found")
    days: dict[str, dict[str, list[RawFile]]] = {}
    for name in STREAMS:
        sdir = raw / name
        if not sdir.exists():
            continue
        if not sdir.is_dir():
            raise RawLogError(
                sdir, None, f"is a file; stream {name} is a folder of date=YYYY-MM-DD partitions"
            )
        for part in sorted(sdir.glob("date=*")):
            date = partition_date(part)
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


def partition_date(part: Path) -> str:
    """The date of a partition folder ``date=YYYY-MM-DD``; a RawLogError naming it if it is not one."""
    m = _PARTITION.fullmatch(part.name)
    try:
        if m is None:
            raise ValueError
        dt.date.fromisoformat(m.group(1))
    except ValueError:
        raise RawLogError(
            part,
            None,
            f"partition folder name {part.name!r} is not date=YYYY-MM-DD with a real calendar date",
        ) from None
    if not part.is_dir():
        raise RawLogError(part, None, "is a file; a day partition is a folder holding the day's files")
    return m.group(1)


def sha256_file(path: Path) -> str:
    """envs/outputs.py's :func:`~envs.outputs.sha256_file`, an unreadable file as a RawLogError naming it."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise RawLogError(path, None, f"cannot be read ({exc.strerror})") from exc


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


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RawLogError(path, None, f"cannot be read ({exc.strerror})") from exc


@dataclass(frozen=True)
class _Text:
    """A text file split into lines: line ``i`` is ``data[starts[i]:ends[i]]`` (newline and CR excluded)."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    utf8: bool  # the whole file decodes as UTF-8

    @classmethod
    def of(cls, data: bytes) -> _Text:
        a = np.frombuffer(data, np.uint8)
        nl = np.flatnonzero(a == 10)
        starts = np.concatenate([[0], nl + 1]).astype(np.int64)
        ends = np.concatenate([nl, [len(a)]]).astype(np.int64)
        if starts[-1] == len(a):  # the file ends with a newline: no line after it
            starts, ends = starts[:-1], ends[:-1]
        cr = (ends > starts) & (a[np.maximum(ends - 1, 0)] == 13) if len(a) else np.zeros(0, bool)
        ends = ends - cr
        try:
            data.decode("utf-8")
            utf8 = True
        except UnicodeDecodeError:
            utf8 = False
        return cls(data, starts, ends, utf8)

    @property
    def n(self) -> int:
        return len(self.starts)

    def count(self, byte: int) -> np.ndarray:
        """Occurrences of ``byte`` in each line."""
        pos = np.flatnonzero(np.frombuffer(self.data, np.uint8) == byte)
        return np.searchsorted(pos, self.ends) - np.searchsorted(pos, self.starts)

    def decoded(self) -> tuple[list[str], np.ndarray]:
        """Each line as text (U+FFFD where bytes are not UTF-8) and which lines are not UTF-8."""
        lines, bad = [], np.zeros(self.n, bool)
        for i, (s, e) in enumerate(zip(self.starts.tolist(), self.ends.tolist(), strict=True)):
            b = self.data[s:e]
            try:
                lines.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                lines.append(b.decode("utf-8", "replace"))
                bad[i] = True
        if lines and lines[0].startswith("\ufeff"):  # a byte-order mark
            lines[0] = lines[0][1:]
        return lines, bad

    def lines(self) -> pl.Series:
        """Every line as text (the whole file is UTF-8)."""
        if b"\x1f" not in self.data and b"\r" not in self.data:  # polars' reader, one field per line
            s = pl.read_csv(
                self.data, has_header=False, separator="\x1f", quote_char=None, schema={"line": pl.String},
                missing_utf8_is_empty_string=True,
            )["line"]  # fmt: skip
            if s.len() == self.n:
                return s.str.strip_prefix("\ufeff")
        lines = self.data.decode("utf-8").removeprefix("\ufeff").split("\n")[: self.n]
        s = pl.Series("line", lines, dtype=pl.String)
        return s.str.strip_suffix("\r") if b"\r" in self.data else s

    def places(self, first: int = 0) -> dict[str, pl.Series]:
        """``_off`` and ``_len`` of lines ``first``.. (where the quarantine finds a row's bytes again)."""
        return {
            "_off": pl.Series("_off", self.starts[first:], dtype=pl.Int64),
            "_len": pl.Series("_len", self.ends[first:] - self.starts[first:], dtype=pl.Int64),
        }


def line_bytes(rows: pl.DataFrame, paths: dict[str, Path]) -> pl.Series:
    """The exact bytes of text rows (``_file``, ``_off``, ``_len``; null offsets give null), reading each
    file once."""
    out: list[bytes | None] = [None] * rows.height
    for file, idx in rows.with_row_index("_i").filter(pl.col("_off").is_not_null()).group_by("_file"):
        data = _read_bytes(paths[file[0]])
        for i, off, n in idx.select("_i", "_off", "_len").iter_rows():
            out[i] = data[off : off + n]
    return pl.Series("line", out, dtype=pl.Binary)


def _csv_header(f: RawFile, text: _Text) -> list[str]:
    head = text.data[text.starts[0] : text.ends[0]]
    try:
        line = head.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise RawLogError(f.path, None, "the header row is not UTF-8 text") from None
    try:
        return [h.strip() for h in next(csv.reader([line], strict=True), [])]
    except csv.Error as exc:
        raise RawLogError(f.path, None, f"the header row is not CSV ({exc})") from exc


def _csv_rows_slowly(lines: list[str], header: list[str], stream: Stream) -> tuple[pl.DataFrame, np.ndarray]:
    """Python's csv module, one line at a time (quotes, or lines that are not UTF-8): values and field
    counts (-1: quotes that do not close)."""
    cols: dict[str, list[str | None]] = {c: [] for c in stream.names}
    where = {c: header.index(c) for c in stream.names}
    counts = np.zeros(len(lines), np.int64)
    for i, line in enumerate(lines):
        try:
            fields = next(csv.reader([line], strict=True), [])
            counts[i] = len(fields)
        except csv.Error:
            fields, counts[i] = [], -1
        for c, k in where.items():
            cols[c].append(fields[k] if k < len(fields) else None)
    return pl.DataFrame(cols, schema={c: pl.String for c in stream.names}), counts


def _read_csv(f: RawFile, stream: Stream) -> pl.DataFrame:
    if f.size == 0:
        raise RawLogError(f.path, None, "empty input: the file is empty (no header, no rows)")
    text = _Text.of(_read_bytes(f.path))
    if text.n == 0:
        raise RawLogError(f.path, None, "empty input: the file is empty (no header, no rows)")
    header = _csv_header(f, text)
    _check_header(f, stream, header)
    n = text.n - 1
    quoted = text.n > 1 and text.data.find(b'"', int(text.starts[1])) != -1
    df = None
    if n == 0:  # a header alone: no rows
        df, counts = pl.DataFrame(schema={c: pl.String for c in stream.names}), np.zeros(0, np.int64)
    elif text.utf8 and not quoted:
        fields = text.count(ord(",")) + 1
        fields[text.ends == text.starts] = 0  # a blank line has no field
        counts = fields[1:]
        schema = {f"_c{i}": pl.String for i in range(len(header))}
        df = pl.read_csv(
            text.data, has_header=False, skip_rows=1, schema=schema, quote_char=None,
            truncate_ragged_lines=True,
        )  # fmt: skip
        if df.height == n:
            df = df.select(pl.col(f"_c{header.index(c)}").alias(c) for c in stream.names)
        else:  # polars split the lines differently: read them one by one
            df = None
    bad = np.zeros(n, bool)
    if df is None:
        lines, bad_all = text.decoded()
        df, counts = _csv_rows_slowly(lines[1:], header, stream)
        bad = bad_all[1:]
    width = len(header)
    defect = np.full(n, None, dtype=object)
    defect[counts < width] = "too_few_fields"
    defect[counts > width] = "too_many_fields"
    defect[counts == -1] = "malformed_row"
    defect[bad] = "bad_encoding"
    df = df.with_columns(
        pl.Series("_row", np.arange(n), dtype=pl.Int64),
        pl.Series("_defect", defect.tolist(), dtype=pl.String),
        **text.places(1),
    )
    return _parse_text(stream, df)


def _read_jsonl(f: RawFile, stream: Stream) -> pl.DataFrame:
    if f.size == 0:
        raise RawLogError(f.path, None, "empty input: the file is empty")
    text = _Text.of(_read_bytes(f.path))
    if text.utf8:
        lines, bad = text.lines(), np.zeros(text.n, bool)
    else:
        decoded, bad = text.decoded()
        lines = pl.Series("line", decoded, dtype=pl.String)
    # Bare NaN / Infinity (as Python's json writes them) are not JSON: quote them so that they reach the
    # validator as values, like any other non-finite number.
    fixed = pl.col("line").str.replace_all(r"(:\s*)" + _GARBAGE_TOKENS + r"(\s*[,}])", '$1"$2"$3')
    frame = pl.DataFrame({"_row": np.arange(text.n), "line": lines}, schema_overrides={"_row": pl.Int64})
    frame = frame.with_columns(fixed.alias("line"))
    dtype = pl.Struct({c.name: pl.String for c in stream.columns})
    not_object = ~pl.col("line").str.strip_chars().str.starts_with("{")
    try:
        if bad.any():
            raise pl.exceptions.ComputeError("lines that are not UTF-8")
        decoded_df = frame.with_columns(
            pl.when(not_object).then(pl.lit("not_json")).alias("_defect"),
            pl.col("line").str.json_decode(dtype),
        ).unnest("line")
    except pl.exceptions.ComputeError:
        decoded_df = _decode_lines_slowly(frame, stream)
    decoded_df = decoded_df.with_columns(
        pl.when(pl.Series(bad)).then(pl.lit("bad_encoding")).otherwise(pl.col("_defect")).alias("_defect"),
        **text.places(0),
    )
    _check_header(f, stream, _json_keys_present(decoded_df.filter(pl.col("_defect").is_null()), stream))
    return _parse_text(stream, decoded_df.select("_row", "_off", "_len", "_defect", *stream.names))


def _decode_lines_slowly(lines: pl.DataFrame, stream: Stream) -> pl.DataFrame:
    """Line-by-line fallback when some line is not a JSON object: it decodes to all-empty values and
    ``_defect`` = ``not_json``."""
    out: dict[str, list] = {c: [] for c in stream.names}
    defect: list[str | None] = []
    for line in lines["line"]:
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError
            defect.append(None)
        except (ValueError, TypeError):
            obj = {}
            defect.append("not_json")
        for c in stream.names:
            v = obj.get(c)
            out[c].append(None if v is None else (json.dumps(v) if not isinstance(v, str) else v))
    return pl.DataFrame(
        {"_row": lines["_row"], "_defect": pl.Series(defect, dtype=pl.String), **out},
        schema_overrides={c: pl.String for c in stream.names},
    )


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
    try:
        df = lf.select("_row", *stream.names).with_columns(raw).with_columns(*exprs, *flags).collect()
    except Exception as exc:  # noqa: BLE001 - a corrupt page is a file-level error too
        raise RawLogError(f.path, None, f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    return df.with_columns(
        pl.lit(None, pl.Int64).alias("_off"),
        pl.lit(None, pl.Int64).alias("_len"),
        pl.lit(None, pl.String).alias("_defect"),
    )


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
    df = df.filter(pl.col("_defect").is_null())  # whole-row problems are quarantined, not typed
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
