"""Audit a build against the generator's defect sidecar: was every injected defect caught or repaired?

What counts as handled, per kind (as offline_data/defects.py documents it):

* ``duplicate``, ``nan``, ``non_numeric``, ``truncated``: the row (file, row) is in the dataset's quarantine
  with reason ``duplicate``, ``nan_value``, ``non_numeric`` (same column) or ``truncated_line``;
* ``jitter``, ``out_of_order``: the row was used and put into its true second;
* ``unit_kw``: the row was used, marked repaired ``unit_kw`` and put into its true second;
* ``clock_jump``: every row from the jump on was used, marked ``clock_jump`` and put into its true second;
* ``gap``: no episode of the dataset spans the gap.

Row-level checks re-run the validator on the day's files (the dataset keeps only what was rejected).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from offline_data.rawio import discover
from offline_data.validate import validate_partition

QUARANTINE_REASON = {
    "duplicate": "duplicate",
    "nan": "nan_value",
    "non_numeric": "non_numeric",
    "truncated": "truncated_line",
}


def audit(raw: Path, dataset: Path) -> dict[str, dict]:
    """``{kind: {"injected": n, "handled": n, "missed": [sidecar rows...]}}`` over all days of ``raw``."""
    raw, dataset = Path(raw), Path(dataset)
    days = discover(raw)
    result: dict[str, dict] = {}
    for date, streams in days.items():
        side_path = raw / "_defects" / f"date={date}.jsonl"
        if not side_path.is_file():
            continue
        sidecar = [json.loads(line) for line in side_path.read_text().splitlines() if line]
        validated = {name: validate_partition(name, files, date).valid for name, files in streams.items()}
        quarantine = {name: _quarantine(dataset, name, date) for name in streams}
        episodes = _episode_spans(dataset, date)
        for rec in sidecar:
            ok = _handled(rec, validated[rec["stream"]], quarantine[rec["stream"]], episodes)
            r = result.setdefault(rec["kind"], {"injected": 0, "handled": 0, "missed": []})
            r["injected"] += 1
            r["handled"] += int(ok)
            if not ok:
                r["missed"].append(rec)
    return result


def _quarantine(dataset: Path, stream: str, date: str) -> pl.DataFrame:
    path = dataset / "quarantine" / stream / f"date={date}.parquet"
    return (
        pl.read_parquet(path)
        if path.is_file()
        else pl.DataFrame(
            schema={"file": pl.String, "row": pl.Int64, "reason": pl.String, "column": pl.String}
        )
    )


def _episode_spans(dataset: Path, date: str) -> pl.DataFrame:
    steps = pq.read_table(dataset / "cache" / f"date={date}" / "steps.parquet", columns=["second", "episode"])
    return (
        pl.from_arrow(steps)
        .group_by("episode")
        .agg(pl.col("second").min().alias("lo"), pl.col("second").max().alias("hi"))
    )


def _handled(rec: dict, valid: pl.DataFrame, quarantine: pl.DataFrame, episodes: pl.DataFrame) -> bool:
    kind, file, row = rec["kind"], rec["file"], rec["row"]
    if kind in QUARANTINE_REASON:
        hit = quarantine.filter(
            (pl.col("file") == file) & (pl.col("row") == row) & (pl.col("reason") == QUARANTINE_REASON[kind])
        )
        if kind in ("nan", "non_numeric"):
            hit = hit.filter(pl.col("column") == rec["column"])
        return hit.height == 1
    if kind == "gap":
        a, b = rec["second"], rec["detail"]["end_second"]
        return episodes.filter((pl.col("lo") < a) & (pl.col("hi") >= b)).height == 0
    used = valid.filter((pl.col("_file") == file) & (pl.col("_row") == row))
    if kind in ("jitter", "out_of_order", "unit_kw"):
        if used.height != 1 or used["second"][0] != rec["second"]:
            return False
        return kind != "unit_kw" or "unit_kw" in (used["repaired"][0] or "").split(",")
    if kind == "clock_jump":
        d = rec["detail"]
        jumped = valid.filter((pl.col("_file") == file) & (pl.col(d["counter"]) >= d["from_counter"]))
        if jumped.height == 0 or not jumped["repaired"].fill_null("").str.contains("clock_jump").all():
            return False
        counter0 = valid.filter(pl.col(d["counter"]) < d["from_counter"])
        # The true second of a row follows from the counter and the clock of the rows before the jump.
        base = (counter0["second"] - counter0[d["counter"]]).mode()[0]
        return bool(((jumped["second"] - jumped[d["counter"]]) == base).all())
    raise ValueError(f"unknown defect kind {kind!r} in the sidecar")
