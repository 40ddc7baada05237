"""Stage 5, split by time, and the normalisation statistics of the train split.

The seconds inside episodes, over all days in time order, are cut at two UTC seconds so that the first
``fractions[0]`` of them go to train, the next ``fractions[1]`` to val and the rest to test
(:func:`boundaries`), and :class:`SplitWriter` streams each split into Parquet files of large row
groups. Transitions never cross a cut (offline_data/transitions.py drops the one step that
would). Normalisation statistics (:class:`Stats`) are accumulated over the train transitions only and
written to ``normalization.json``: per feature of ``obs`` (names from envs/state_spec.py) and per action,
the count, mean, standard deviation (population; 1 where it is 0), min and max, and the same for rewards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from envs.actions import ACTION_NAMES
from envs.state_spec import FEATURE_NAMES, spec_dict
from offline_data.transitions import TRANSITION_SCHEMA

SPLITS = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15); three non-negative numbers summing to 1."""
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise ValueError(f"split: expected three numbers like 0.7,0.15,0.15, got {text!r}") from exc
    if len(parts) != 3 or any(p < 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise ValueError(f"split: expected three non-negative fractions summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def boundaries(
    day_counts: list[tuple[str, int]],
    fractions: tuple[float, float, float],
    day_seconds: Callable[[str], np.ndarray],
) -> tuple[int, int]:
    """The two cut seconds for ``day_counts`` = [(date, seconds in episodes)] in time order.

    Args:
        day_counts: Per day, the number of seconds inside episodes.
        fractions: Shares of train, val and test.
        day_seconds: Loads one day's episode seconds (sorted); called for the days holding a cut only, so
            memory does not grow with the number of days.

    Returns:
        ``(b1, b2)``: train is ``second < b1``, val ``b1 <= second < b2``, test ``second >= b2``.
    """
    total = sum(n for _, n in day_counts)
    cuts = []
    for share in (fractions[0], fractions[0] + fractions[1]):
        target = int(round(share * total))
        seen = 0
        cut = None
        for date, n in day_counts:
            if seen + n > target:
                cut = int(day_seconds(date)[target - seen])
                break
            seen += n
        if cut is None:  # the share covers everything
            last = [d for d, n in day_counts if n][-1] if total else None
            cut = int(day_seconds(last)[-1]) + 1 if last else 0
        cuts.append(cut)
    return cuts[0], cuts[1]


class SplitWriter:
    """Streams transition tables into ``<split>/part-NNNNN.parquet`` in large row groups."""

    def __init__(self, root: Path, split: str, row_group_rows: int, rows_per_file: int) -> None:
        self.dir = root / split
        self.dir.mkdir(parents=True)
        self.split, self.row_group_rows, self.rows_per_file = split, row_group_rows, rows_per_file
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.writer: pq.ParquetWriter | None = None
        self.file_rows = 0
        self.files: list[str] = []
        self.rows = 0
        self.episodes: set[str] = set()
        self.span = [None, None]

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        self.episodes.update(table["eps_id"].unique().to_pylist())
        ts = table["time_s"]
        lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
        self.span = [
            lo if self.span[0] is None else min(self.span[0], lo),
            hi if self.span[1] is None else max(self.span[1], hi),
        ]
        if self.buffered >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.buffered:
            return
        table = pa.concat_tables(self.buffer)
        self.buffer, self.buffered = [], 0
        if self.writer is None or self.file_rows >= self.rows_per_file:
            self.close_file()
            name = f"part-{len(self.files):05d}.parquet"
            self.writer = pq.ParquetWriter(
                self.dir / name,
                TRANSITION_SCHEMA,
                compression="snappy",
                use_dictionary=["eps_id"],
                write_statistics=["eps_id", "t", "time_s"],
            )
            self.files.append(f"{self.split}/{name}")
            self.file_rows = 0
        self.writer.write_table(table, row_group_size=self.row_group_rows)
        self.file_rows += table.num_rows

    def close_file(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> dict:
        self._flush()
        self.close_file()
        if not self.files:  # an empty split is still a readable (empty) dataset
            name = "part-00000.parquet"
            pq.write_table(TRANSITION_SCHEMA.empty_table(), self.dir / name)
            self.files.append(f"{self.split}/{name}")
        return {
            "files": self.files,
            "rows": self.rows,
            "episodes": len(self.episodes),
            "time_span_s": self.span,
        }


class Stats:
    """Streaming count / sum / sum of squares / min / max, merged from per-chunk partial sums."""

    def __init__(self) -> None:
        self.parts: dict[str, np.ndarray] = {}

    def add(self, partial: dict[str, np.ndarray]) -> None:
        for name, p in partial.items():
            if name not in self.parts:
                self.parts[name] = p.copy()
                continue
            acc = self.parts[name]
            acc[0:3] += p[0:3]
            acc[3] = np.minimum(acc[3], p[3])
            acc[4] = np.maximum(acc[4], p[4])

    def _summary(self, name: str, names: tuple[str, ...]) -> dict:
        if name not in self.parts or self.parts[name][0, 0] == 0:
            return {"count": 0, "names": list(names)}
        count, s, ss, lo, hi = self.parts[name]
        mean = s / count
        std = np.sqrt(np.maximum(ss / count - mean * mean, 0.0))
        std = np.where(std > 1e-12, std, 1.0)
        return {
            "count": int(count[0]),
            "names": list(names),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "min": lo.tolist(),
            "max": hi.tolist(),
        }

    def normalization(self) -> dict:
        """The content of normalization.json."""
        return {
            "computed_on": "train",
            "state_spec_sha256": spec_dict()["sha256"],
            "obs": self._summary("obs", FEATURE_NAMES),
            "actions": self._summary("actions", ACTION_NAMES),
            "rewards": self._summary("rewards", ("reward",)),
        }
