"""Defects of real logs, injected into clean simulated streams, each recorded in a sidecar.

What is injected, per stream and day partition, at rate ``RATE`` (``gridrl data generate
--defects``), and what the pipeline (offline_data/validate.py, align.py) does with it:

* ``jitter`` (meter, PI; row share RATE/k): ``ts`` moves by 0.2-0.3 s. Repaired: a reading goes to
  its nearest second, a cycle to the second it ran in.
* ``duplicate`` (all; row share RATE/k): the row is written twice in a row. Caught: the copy is
  quarantined (``duplicate``).
* ``out_of_order`` (all; row share RATE/k): the row moves 2-30 rows later in the file. Repaired: rows
  are sorted by time.
* ``nan`` (all; row share RATE/k): one value becomes NaN. Caught: ``nan_value``.
* ``non_numeric`` (all, text formats; row share RATE/k): one value becomes text (``ERR``, ``n/a``...).
  Caught: ``non_numeric``.
* ``unit_kw`` (meter; row share RATE/k): the six powers are written in kW. Repaired: scaled back to W.
* ``gap`` (meter, PI; Poisson(100 RATE) per day, at least 1): 30-600 s of rows are removed. The
  episode ends (longer than the staleness limit); nothing is interpolated.
* ``clock_jump`` (meter or PI; one per day): ``ts`` of the rows from a point on shifts by minutes to
  hours. Repaired from the row counter.
* ``truncated`` (all, text formats; per file with probability 25 RATE): the file's last line is cut.
  Caught: ``truncated_line``.

``k`` is the number of row-level kinds that apply to the stream; a row gets at most one row-level
defect. Sidecar rows (JSON Lines, ``RAW/_defects/date=YYYY-MM-DD.jsonl``): ``stream``, ``file``,
``kind``, ``row`` (0-based data row in the written file, or -1), ``second`` (the true UTC second of
the row), ``column``, ``detail``. offline_data/audit.py checks a build against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from offline_data.schemas import STREAMS, TS_FORMAT

GARBAGE = ("ERR", "n/a", "#VALUE!", "--", "1.2.3", "null?")
ROW_KINDS = {
    "meter_readings": ("jitter", "duplicate", "out_of_order", "nan", "non_numeric", "unit_kw"),
    "pi_state": ("jitter", "duplicate", "out_of_order", "nan", "non_numeric"),
    "zigbee_commands": ("duplicate", "out_of_order", "nan", "non_numeric"),
}
GAP_STREAMS = ("meter_readings", "pi_state")
JUMP_STREAMS = ("meter_readings", "pi_state")
JUMPS_S = (-3600, -600, 300, 900, 3600, 7200)


@dataclass
class Injected:
    """Defects planned for one stream-day, by original row index; filled in before the rows are written."""

    rows: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> original row indices
    columns: dict[int, str] = field(
        default_factory=dict
    )  # original row -> corrupted column (nan/non_numeric)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) true seconds
    jump: tuple[int, int] | None = None  # (first original row, shift in s)
    truncated: bool = False


def plan(
    stream: str, seconds: np.ndarray, rate: float, fmt: str, jump_here: bool, rng: np.random.Generator
) -> Injected:
    """Choose which rows get which defect (``seconds``: true second of each clean row, ascending)."""
    inj = Injected()
    n = len(seconds)
    if rate <= 0 or n == 0:
        return inj
    keep = np.ones(n, bool)
    if stream in GAP_STREAMS and n > 200:
        span = int(seconds[-1] - seconds[0])
        for _ in range(max(1, rng.poisson(100 * rate * span / 86400))):
            length = int(rng.integers(30, min(600, span // 10) + 1))
            start = int(rng.integers(seconds[0] + 60, seconds[-1] - length - 60))
            inj.gaps.append((start, start + length))
            keep &= ~((seconds >= start) & (seconds < start + length))
    kinds = [k for k in ROW_KINDS[stream] if not (k == "non_numeric" and fmt == "parquet")]
    hit = np.flatnonzero(keep & (rng.random(n) < rate))
    which = rng.integers(0, len(kinds), len(hit))
    for i, kind in enumerate(kinds):
        inj.rows[kind] = hit[which == i]
    value_cols = STREAMS[stream].of_kind("float")
    for kind in ("nan", "non_numeric"):
        for r in inj.rows.get(kind, ()):
            inj.columns[int(r)] = value_cols[int(rng.integers(len(value_cols)))]
    if jump_here:
        first = int(rng.integers(int(0.55 * n), int(0.9 * n)))
        while not keep[first]:
            first += 1
        inj.jump = (first, int(rng.choice(JUMPS_S)))
    inj.truncated = fmt != "parquet" and rng.random() < min(1.0, 25 * rate)
    return inj


def apply_typed(stream: str, df: pl.DataFrame, inj: Injected, rng: np.random.Generator) -> pl.DataFrame:
    """Defects that change typed values: jitter, kW glitch, clock jump (``ts_ms`` is Int64 milliseconds)."""
    n = df.height
    ts = df["ts_ms"].to_numpy().copy()
    jit = inj.rows.get("jitter", np.empty(0, int))
    ts[jit] += (rng.uniform(200, 300, len(jit)) * rng.choice([-1, 1], len(jit))).astype(np.int64)
    if inj.jump is not None:
        ts[inj.jump[0] :] += inj.jump[1] * 1000
    out = df.with_columns(pl.Series("ts_ms", ts))
    kw = inj.rows.get("unit_kw", np.empty(0, int))
    if len(kw):
        mask = np.zeros(n, bool)
        mask[kw] = True
        m = pl.Series(mask)
        out = out.with_columns(
            pl.when(m).then(pl.col(c) / 1000.0).otherwise(pl.col(c)).alias(c)
            for c in STREAMS[stream].of_kind("float")
        )
    return out


def to_cells(
    stream: str, df: pl.DataFrame, inj: Injected, fmt: str, rng: np.random.Generator
) -> pl.DataFrame:
    """The rows as they will be written: strings for text formats (full precision), typed for Parquet,
    with NaN / non-numeric values put in. Keeps the helper columns ``__id`` and ``__s``."""
    s = STREAMS[stream]
    ts_exprs = [pl.col(c + "_ms").cast(pl.Datetime("ms", "UTC")).alias(c) for c in s.of_kind("timestamp")]
    out = df.with_columns(ts_exprs)
    bad = {kind: inj.rows.get(kind, np.empty(0, int)) for kind in ("nan", "non_numeric")}
    if fmt != "parquet":
        conv = []
        for c in s.columns:
            if c.kind == "timestamp":
                conv.append(pl.col(c.name).dt.strftime(TS_FORMAT))
            elif c.kind == "bool":
                conv.append(
                    pl.when(pl.col(c.name)).then(pl.lit("true")).otherwise(pl.lit("false")).alias(c.name)
                )
            else:
                conv.append(pl.col(c.name).cast(pl.String))
        out = out.with_columns(conv)
    cols = {c: out[c].to_list() for c in set(inj.columns.values())}
    for kind, rows in bad.items():
        for r in rows:
            c = inj.columns[int(r)]
            if kind == "nan":
                cols[c][r] = float("nan") if fmt == "parquet" else str(rng.choice(["NaN", "nan"]))
            else:
                cols[c][r] = str(rng.choice(GARBAGE))
    if cols:
        out = out.with_columns(pl.Series(c, v, dtype=out.schema[c]) for c, v in cols.items())
    return out.select(*s.names, "__id", "__s")


def apply_rows(df: pl.DataFrame, inj: Injected, rng: np.random.Generator) -> pl.DataFrame:
    """Row-structure defects: gaps (rows removed), duplicates (copied in place), out-of-order (moved)."""
    sec = df["__s"].to_numpy()
    keep = np.ones(df.height, bool)
    for a, b in inj.gaps:
        keep &= ~((sec >= a) & (sec < b))
    order = list(np.flatnonzero(keep))
    dup = set(int(r) for r in inj.rows.get("duplicate", ()))
    seq: list[tuple[int, int]] = []  # (original id, copy flag)
    for r in order:
        seq.append((r, 0))
        if r in dup:
            seq.append((r, 1))
    moved = set(int(r) for r in inj.rows.get("out_of_order", ()))
    pos = {key: i for i, key in enumerate(seq)}
    for r in sorted(moved):
        i = pos[(r, 0)]
        j = min(len(seq) - 1, i + int(rng.integers(2, 31)))
        seq.insert(j, seq.pop(i))
        for k in range(i, j + 1):
            pos[seq[k]] = k
    ids = np.array([k for k, _ in seq], dtype=np.int64)
    copy = np.array([c for _, c in seq], dtype=np.int8)
    return df[ids].with_columns(pl.Series("__copy", copy))


def records(stream: str, rel: str, written: pl.DataFrame, inj: Injected, n_lines: int) -> list[dict]:
    """Sidecar rows for the defects of one written file (``written``: its rows in file order, with the
    helper columns). A clock jump's detail names the counter value from which on the rows are shifted."""
    ids = written["__id"].to_numpy()
    copy = written["__copy"].to_numpy()
    secs = written["__s"].to_numpy()
    first_row = {int(i): r for r, i in enumerate(ids) if copy[r] == 0}
    if inj.truncated and n_lines:  # the cut line's own defect, if any, is gone with it
        first_row = {i: r for i, r in first_row.items() if r != n_lines - 1}
    out: list[dict] = []
    base = {"stream": stream, "file": rel}
    for kind, rows in inj.rows.items():
        for r in rows:
            r = int(r)
            if r not in first_row:
                continue
            row = first_row[r]
            if kind == "duplicate":
                row = next(k for k in range(row + 1, len(ids)) if ids[k] == r and copy[k] == 1)
                if inj.truncated and row == n_lines - 1:
                    continue
            out.append(
                {
                    **base,
                    "kind": kind,
                    "row": row,
                    "second": int(secs[row]),
                    "column": inj.columns.get(r),
                    "detail": None,
                }
            )
    for a, b in inj.gaps:
        out.append(
            {**base, "kind": "gap", "row": -1, "second": a, "column": None, "detail": {"end_second": b}}
        )
    if inj.jump is not None:
        r0, shift = inj.jump
        rows = [first_row[r] for r in range(r0, int(ids.max()) + 1) if r in first_row]
        counter = "seq" if stream == "meter_readings" else "cycle"
        first = min(rows)
        out.append(
            {
                **base,
                "kind": "clock_jump",
                "row": first,
                "second": int(secs[first]),
                "column": None,
                "detail": {
                    "shift_s": shift,
                    "counter": counter,
                    "from_counter": int(written[counter][first]),
                    "rows": len(rows),
                },
            }
        )
    if inj.truncated:
        out.append(
            {
                **base,
                "kind": "truncated",
                "row": n_lines - 1,
                "second": int(secs[n_lines - 1]),
                "column": None,
                "detail": None,
            }
        )
    return out
