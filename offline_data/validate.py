"""Stage 1, validate: every raw row is either used or quarantined with a reason; two defects are repaired.

Checks, in this order (a row gets the first reason that applies; ``column`` names the column; ``line``
keeps a text row's exact bytes, so a row that could not be read at all is kept as it was):

| reason | rows |
| --- | --- |
| ``truncated_line`` | the last line of a text file that does not end with a newline |
| ``bad_encoding`` | a text row with bytes that are not UTF-8 |
| ``too_few_fields`` | a CSV row with fewer fields than the header (a blank line has none) |
| ``too_many_fields`` | a CSV row with more fields than the header |
| ``malformed_row`` | a CSV row whose quotes do not close |
| ``not_json`` | a JSON Lines line that is not a JSON object |
| ``missing_value`` | an empty value in a column that may not be empty |
| ``non_numeric`` | a value that does not parse as its column's type (text, a bad timestamp, a bad bool) |
| ``nan_value`` | NaN or infinite number |
| ``duplicate`` | an exact copy of an earlier row of the same day partition |
| ``out_of_range`` | meter beyond +-1 MW, PI beyond +-10 MW, command < 0 or > 1 MW, phase not 1-3 |
| ``outside_partition`` | a time that cannot fall on the partition's date in any time zone (after repairs) |
| ``duplicate_second`` | meter / PI: a second row for the same second (the first by time is kept) |
| ``duplicate_seq`` | commands: a second row with the same slave and sequence number |
| ``phase_mismatch`` | commands: a slave on another phase than in its other rows |

Repairs (rows kept, counted under ``repaired``):

* ``clock_jump`` (meter, PI): the row counter (``seq``, ``cycle``) advances once a second, so
  ``ts - counter`` is constant for one clock. Where it steps by more than 2 s while the counter runs
  on, the clock jumped; rows are re-timed to the clock of the majority of the partition's rows (a step
  where the counter goes back by more than 100 and stays back is a device restart, not a jump; a single
  row written late, whose counter falls back and the next row's does not, is neither).
* ``unit_kw`` (meter): a row whose six powers are all within +-100 and whose total magnitude is below 1/20
  of the rolling median of its 11 neighbours was written in kW: its values are scaled by 1000.

Timestamp jitter below half a second and out-of-order rows need no repair here: alignment sorts by time
and puts each row into its second (offline_data/align.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from offline_data.rawio import RawFile, RawLogError, check_types, line_bytes, read_raw
from offline_data.schemas import COMMANDS, METER, PI_STATE, STREAMS, Stream

MAX_METER_W = 1e6
MAX_PI_W = 1e7
KW_WINDOW = 11
KW_RATIO = 20.0
KW_MAX = 100.0
JUMP_MS = 2000
RESTART_DROP = 100  # counter steps back by more than this (a device restart, see repair_clock)
QUARANTINE_COLUMNS = ("file", "row", "reason", "column", "raw", "line")


@dataclass
class Validated:
    """One stream's day partition after validation.

    Attributes:
        valid: Used rows, sorted by time: the stream's columns (timestamps as ``*_ms`` Int64 ms), ``_file``,
            ``_row``, ``second`` (meter: nearest second; PI: the second the cycle ran in; commands: the
            second it was sent) and ``repaired`` (null, or the repairs applied, comma-separated:
            ``clock_jump``, ``unit_kw``).
        quarantine: ``file, row, reason, column, raw, line`` for every rejected row (``raw``: the values
            as read, as JSON; ``line``: text formats, the row's exact bytes in the file).
        unknown_from: commands only: ``slave_id`` (null = any) and ``second`` from which a rejected command
            row makes the acknowledged state unknown (offline_data/align.py).
    """

    stream: str
    valid: pl.DataFrame
    quarantine: pl.DataFrame
    unknown_from: pl.DataFrame | None = None
    counts: dict = field(default_factory=dict)


def _first_reason(stream: Stream) -> tuple[pl.Expr, pl.Expr]:
    """(reason, column) of the first row-level check that fails, null when none does."""
    checks: list[tuple[pl.Expr, str, str | None]] = [(pl.col("_truncated"), "truncated_line", None)]
    for c in stream.columns:
        if not c.nullable:
            checks.append((pl.col(c.name).is_null() & ~pl.col(f"_bad_{c.name}"), "missing_value", c.name))
    for c in stream.columns:
        checks.append((pl.col(f"_bad_{c.name}"), "non_numeric", c.name))
    for name in stream.of_kind("float"):
        checks.append((pl.col(name).is_nan() | pl.col(name).is_infinite(), "nan_value", name))
    readable = pl.when(pl.col("_defect").is_null()).then(pl.col("_raw"))  # a broken row is nobody's copy
    checks.append((readable.is_not_null() & ~readable.is_first_distinct(), "duplicate", None))
    reason, column = pl.lit(None, pl.String), pl.lit(None, pl.String)
    for cond, r, col in reversed(checks[1:]):
        reason = pl.when(cond.fill_null(False)).then(pl.lit(r)).otherwise(reason)
        column = pl.when(cond.fill_null(False)).then(pl.lit(col, pl.String)).otherwise(column)
    # A row that could not be read as a whole (rawio's _defect) gets that reason, after truncated_line.
    defect = pl.col("_defect").is_not_null()
    reason = pl.when(defect).then(pl.col("_defect")).otherwise(reason)
    column = pl.when(defect).then(pl.lit(None, pl.String)).otherwise(column)
    truncated = checks[0][0].fill_null(False)
    reason = pl.when(truncated).then(pl.lit("truncated_line")).otherwise(reason)
    column = pl.when(truncated).then(pl.lit(None, pl.String)).otherwise(column)
    return reason.alias("reason"), column.alias("column")


def _flag(df: pl.DataFrame, cond: pl.Expr, reason: str, column: str | None = None) -> pl.DataFrame:
    """Set ``reason`` on rows that have none yet and meet ``cond``."""
    hit = pl.col("reason").is_null() & cond.fill_null(False)
    return df.with_columns(
        pl.when(hit).then(pl.lit(reason)).otherwise(pl.col("reason")).alias("reason"),
        pl.when(hit).then(pl.lit(column, pl.String)).otherwise(pl.col("column")).alias("column"),
    )


def repair_clock(df: pl.DataFrame, counter: str) -> pl.DataFrame:
    """Re-time rows after clock jumps (see the module docstring); ``df`` in file order, usable rows only."""
    if df.height == 0:
        return df.with_columns(pl.lit(None, pl.String).alias("repaired"))
    off = pl.col("ts_ms") - pl.col(counter) * 1000
    d = df.with_columns(off.alias("_off"))
    # A restart: the counter falls back by more than RESTART_DROP and the next row stays down. One row
    # written late (out of order, up to 30 rows, which across a gap can be minutes of counter) comes back up.
    prev = pl.col(counter).shift(1).fill_null(pl.col(counter).first())
    nxt = pl.col(counter).shift(-1).fill_null(pl.col(counter))
    restart = (pl.col(counter) < prev - RESTART_DROP) & (nxt < prev - RESTART_DROP)
    d = d.with_columns(
        restart.cum_sum().alias("_era"),
        ((pl.col("_off") - pl.col("_off").shift(1)).abs().fill_null(0) > JUMP_MS).cum_sum().alias("_seg"),
    )
    seg = d.group_by("_era", "_seg").agg(pl.len().alias("_n"), pl.col("_off").median().alias("_med"))
    seg = seg.with_columns((pl.col("_med") / 1000).round().alias("_key"))
    clusters = seg.group_by("_era", "_key").agg(
        pl.col("_n").sum().alias("_size"), pl.col("_med").median().alias("_cmed")
    )
    ref = clusters.sort("_size", descending=True).group_by("_era", maintain_order=True).first()
    seg = seg.join(ref.select("_era", pl.col("_cmed").alias("_ref")), on="_era")
    seg = seg.with_columns(
        pl.when((pl.col("_med") - pl.col("_ref")).abs() > JUMP_MS)
        .then((pl.col("_med") - pl.col("_ref")).round().cast(pl.Int64))
        .otherwise(0)
        .alias("_shift")
    )
    d = d.join(seg.select("_era", "_seg", "_shift"), on=["_era", "_seg"], how="left", maintain_order="left")
    return d.with_columns(
        (pl.col("ts_ms") - pl.col("_shift")).alias("ts_ms"),
        pl.when(pl.col("_shift") != 0).then(pl.lit("clock_jump")).otherwise(None).alias("repaired"),
    ).drop("_off", "_era", "_seg", "_shift")


def repair_unit_kw(df: pl.DataFrame) -> pl.DataFrame:
    """Scale rows logged in kW back to W (see the module docstring); ``df`` sorted by time.

    Only rows whose six values are all within +-KW_MAX can be in kW; the rolling median is computed for
    those candidates alone, from their KW_WINDOW neighbours (fewer at the ends).
    """
    cols = METER.of_kind("float")
    small = df.select(pl.max_horizontal(pl.col(c).abs() for c in cols) <= KW_MAX).to_series()
    cand = small.arg_true().to_numpy()
    if len(cand) == 0:
        return df
    values = df.select(cols).to_numpy()
    half = KW_WINDOW // 2
    offsets = np.arange(-half, half + 1)
    idx = cand[:, None] + offsets[None, :]
    inside = (idx >= 0) & (idx < len(values))
    window = np.where(inside[:, :, None], values[np.clip(idx, 0, len(values) - 1)], np.nan)
    ref = np.abs(np.nanmedian(window, axis=1)).sum(axis=1)
    mag = np.abs(values[cand]).sum(axis=1)
    glitch = np.zeros(len(values), bool)
    glitch[cand[mag * KW_RATIO < ref]] = True
    if not glitch.any():
        return df
    g = pl.Series("_kw", glitch)
    return df.with_columns(
        *(pl.when(g).then(pl.col(c) * 1000.0).otherwise(pl.col(c)).alias(c) for c in cols),
        pl.when(g)
        .then(pl.concat_str(pl.col("repaired"), pl.lit("unit_kw"), separator=",", ignore_nulls=True))
        .otherwise(pl.col("repaired"))
        .alias("repaired"),
    )


def _partition_window_ms(date: str) -> tuple[int, int]:
    """UTC ms range that a local date can cover in any time zone (UTC-12 .. UTC+14)."""
    d0 = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
    start = int((d0 - dt.timedelta(hours=14)).timestamp() * 1000)
    end = int((d0 + dt.timedelta(hours=36)).timestamp() * 1000)
    return start, end


def validate_partition(name: str, files: list[RawFile], date: str) -> Validated:
    """Validate one stream's day partition (one or more files). File-level problems raise RawLogError."""
    stream = STREAMS[name]
    df = pl.concat([read_raw(f) for f in files], how="vertical")
    if df.height == 0 and name != COMMANDS.name:
        raise RawLogError(files[0].path, None, "empty input: no data rows")
    check_types(df, {f.rel: f.path for f in files}, stream)
    df = df.with_columns(*_first_reason(stream))
    ts_cols = stream.of_kind("timestamp")
    df = df.with_columns(pl.col(c).dt.epoch("ms").alias(f"{c}_ms") for c in ts_cols).drop(ts_cols)
    df = df.with_columns(pl.lit(None, pl.String).alias("repaired"))
    ok = df.filter(pl.col("reason").is_null())
    if name in (METER.name, PI_STATE.name):
        counter = "seq" if name == METER.name else "cycle"
        ok = repair_clock(ok, counter)
    ok = ok.sort("ts_ms", "_file", "_row")
    if name == METER.name:
        ok = repair_unit_kw(ok)
    ok = _range_checks(name, ok, date)
    rest = df.filter(pl.col("reason").is_not_null())
    allrows = pl.concat([ok, rest], how="diagonal_relaxed")
    rejected = allrows.filter(pl.col("reason").is_not_null()).sort("_file", "_row")
    quarantine = rejected.select(
        pl.col("_file").alias("file"),
        pl.col("_row").alias("row"),
        "reason",
        "column",
        pl.col("_raw").alias("raw"),
        line_bytes(rejected, {f.rel: f.path for f in files}),
    )
    valid = (
        allrows.filter(pl.col("reason").is_null())
        .sort("ts_ms", "_file", "_row")
        .drop(
            [c for c in allrows.columns if c.startswith("_bad_")]
            + ["_raw", "_off", "_len", "_defect", "_truncated", "reason", "column"]
        )
    )
    counts = {
        "rows_in": df.height,
        "rows_used": valid.height,
        "rows_quarantined": quarantine.height,
        "quarantined_by_reason": dict(sorted(quarantine.group_by("reason").len().iter_rows())),
        "repaired": dict(
            sorted(
                valid.select(pl.col("repaired").str.split(","))
                .explode("repaired")
                .drop_nulls()
                .group_by("repaired")
                .len()
                .iter_rows()
            )
        ),
    }
    assert counts["rows_in"] == counts["rows_used"] + counts["rows_quarantined"], counts
    unknown = _unknown_from(allrows) if name == COMMANDS.name else None
    return Validated(name, valid, quarantine, unknown, counts)


def _range_checks(name: str, ok: pl.DataFrame, date: str) -> pl.DataFrame:
    lo, hi = _partition_window_ms(date)
    stream = STREAMS[name]
    floats = stream.of_kind("float")
    if name == METER.name:
        for c in floats:
            ok = _flag(ok, pl.col(c).abs() > MAX_METER_W, "out_of_range", c)
    elif name == PI_STATE.name:
        for c in floats:
            ok = _flag(ok, pl.col(c).abs() > MAX_PI_W, "out_of_range", c)
    else:
        ok = _flag(ok, (pl.col("value_w") < 0) | (pl.col("value_w") > MAX_METER_W), "out_of_range", "value_w")
        ok = _flag(ok, ~pl.col("phase").is_in([1, 2, 3]), "out_of_range", "phase")
    ok = _flag(ok, (pl.col("ts_ms") < lo) | (pl.col("ts_ms") >= hi), "outside_partition", "ts")
    if name == METER.name:
        ok = ok.with_columns(((pl.col("ts_ms") + 500) // 1000).alias("second"))
    else:
        ok = ok.with_columns((pl.col("ts_ms") // 1000).alias("second"))
    live = pl.col("reason").is_null()
    if name in (METER.name, PI_STATE.name):
        ok = ok.with_columns(pl.when(live).then(pl.col("second")).alias("_k"))
        ok = _flag(
            ok,
            pl.col("_k").is_not_null() & pl.col("_k").is_duplicated() & ~pl.col("_k").is_first_distinct(),
            "duplicate_second",
            "ts",
        )
    else:
        key = pl.when(live).then(
            pl.concat_str(pl.col("slave_id"), pl.col("seq").cast(pl.String), separator="#")
        )
        ok = ok.with_columns(key.alias("_k"))
        ok = _flag(ok, pl.col("_k").is_not_null() & ~pl.col("_k").is_first_distinct(), "duplicate_seq", "seq")
        phase = (
            ok.filter(pl.col("reason").is_null())
            .group_by("slave_id")
            .agg(pl.col("phase").mode().first().alias("_phase"))
        )
        ok = ok.join(phase, on="slave_id", how="left", maintain_order="left")
        ok = _flag(
            ok,
            pl.col("_phase").is_not_null() & (pl.col("phase") != pl.col("_phase")),
            "phase_mismatch",
            "phase",
        ).drop("_phase")
    return ok.drop("_k")


def _unknown_from(df: pl.DataFrame) -> pl.DataFrame:
    """Rejected command rows (other than exact copies): the slave (if readable) and the second from which its
    acknowledged power is unknown (the row's own time, or the last readable time before it in the file)."""
    d = df.sort("_file", "_row").with_columns(pl.col("ts_ms").forward_fill().alias("_prev"))
    bad = d.filter(pl.col("reason").is_not_null() & ~pl.col("reason").is_in(["duplicate", "duplicate_seq"]))
    return bad.select(
        pl.col("slave_id"),
        (pl.coalesce("ts_ms", "_prev", pl.lit(0, pl.Int64)) // 1000).alias("second"),
    )
