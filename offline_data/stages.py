"""The per-day stages of the build (validate, align, features), run day by day or in worker processes.

Days are independent until the split, so each stage maps one function over the days to process: in this
process (``workers=1``) or in a pool of worker processes (one day per task, so memory grows with the
number of workers, never with the number of days). Stages hand over through files in a scratch folder:
the validated rows and the aligned grid as Arrow IPC, the steps as Parquet in the day's cache folder.
The results do not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from envs.reward import RewardWeights
from offline_data.align import AlignConfig, Aligned, align_day
from offline_data.progress import Progress
from offline_data.rawio import RawFile
from offline_data.schemas import COMMANDS, METER, PI_STATE, STREAMS
from offline_data.transitions import day_steps
from offline_data.validate import Validated, validate_partition


def validate_day(date: str, streams: dict[str, list[RawFile]], scratch: Path, root: Path) -> dict:
    """Validate the three streams of one day; quarantine goes to ``root/quarantine``."""
    d = scratch / f"date={date}"
    d.mkdir(parents=True)
    counts = {}
    for name in STREAMS:
        v = validate_partition(name, streams[name], date)
        v.valid.write_ipc(d / f"{name}.arrow")
        if v.unknown_from is not None:
            v.unknown_from.write_ipc(d / f"{name}.unknown.arrow")
        q = root / "quarantine" / name
        q.mkdir(parents=True, exist_ok=True)
        v.quarantine.write_parquet(q / f"date={date}.parquet")
        counts[name] = v.counts
    return counts


def _load_validated(d: Path, name: str) -> Validated:
    unknown = d / f"{name}.unknown.arrow"
    return Validated(
        name,
        pl.read_ipc(d / f"{name}.arrow", memory_map=False),
        pl.DataFrame(),
        pl.read_ipc(unknown, memory_map=False) if unknown.exists() else None,
    )


def align_one(date: str, scratch: Path, cfg: AlignConfig) -> dict:
    d = scratch / f"date={date}"
    a = align_day(*(_load_validated(d, n) for n in (METER.name, PI_STATE.name, COMMANDS.name)), cfg)
    a.frame.write_ipc(d / "aligned.arrow")
    return a.counts


def features_one(
    date: str, scratch: Path, root: Path, max_w: float, reward: RewardWeights, latitude_deg: float, longitude_deg: float
) -> dict:
    frame = pl.read_ipc(scratch / f"date={date}" / "aligned.arrow", memory_map=False)
    steps = day_steps(Aligned(frame), max_w, reward, latitude_deg, longitude_deg)
    out = root / "cache" / f"date={date}"
    out.mkdir(parents=True)
    pq.write_table(steps, out / "steps.parquet", use_dictionary=False, write_statistics=["second"])
    sec = steps["second"].to_numpy()
    return {
        "steps": steps.num_rows,
        "first_second": int(sec.min()) if len(sec) else None,
        "last_second": int(sec.max()) if len(sec) else None,
    }


def make_pool(workers: int) -> Executor | None:
    """A pool of ``workers`` processes (None for 1). Each worker's polars uses one thread."""
    if workers <= 1:
        return None
    saved = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = "1"  # inherited by the spawned workers only
    try:
        return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    finally:
        if saved is None:
            os.environ.pop("POLARS_MAX_THREADS", None)
        else:
            os.environ["POLARS_MAX_THREADS"] = saved


def run_stage(
    stage: str,
    fn: Callable[..., dict],
    days: list[str],
    args: Callable[[str], tuple],
    pool: Executor | None,
    progress: bool,
) -> dict[str, dict]:
    """``{date: fn(date, *args(date))}`` for every day, with a progress bar; the first error stops it."""
    out: dict[str, dict] = {}
    with Progress(stage, len(days), "days", progress) as bar:
        if pool is None or len(days) <= 1:
            for date in days:
                out[date] = fn(date, *args(date))
                bar.update(1, date)
        else:
            futures = {pool.submit(fn, date, *args(date)): date for date in days}
            try:
                for f in as_completed(futures):
                    out[futures[f]] = f.result()
                    bar.update(1, futures[f])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return {d: out[d] for d in days}


def default_workers() -> int:
    """Worker processes for the CLI's default: the CPUs this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))
