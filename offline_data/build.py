"""``gridrl data build``: raw logs -> validated, aligned, featurised, split RLlib-ready Parquet.

Stages (a progress bar each): ``scan`` (sha256 of every source file), ``validate``
(offline_data/validate.py), ``align`` (align.py), ``features`` (transitions.day_steps), ``split`` and
``write`` (split.py, transitions.transitions). Output, in ``DATASET/``:

* ``train/``, ``val/``, ``test/``: Parquet files of transitions (transitions.TRANSITION_SCHEMA), in large
  row groups (``ray.data.read_parquet`` and RLlib's ``.offline_data(input_=...)`` read them);
* ``normalization.json``: statistics of the train split;
* ``quarantine/<stream>/date=YYYY-MM-DD.parquet``: every rejected row with ``file, row, reason, column, raw``;
* ``cache/date=YYYY-MM-DD/``: each day's steps and counts, keyed by the sha256 of its source files and the
  settings that shape a day;
* ``manifest.json``: sources with sha256, counts per stream and stage, time span, versions, command line.
  Written last: a folder without it is not a dataset.

**Incremental.** A day whose key matches the previous build's is reused (its cache and quarantine files
are hard-linked); only new or changed day partitions go through validate, align and features. Split
boundaries move with the data, so the split files are always rewritten from the cached steps.

**Atomic.** Everything is built in a sibling folder ``.DATASET.tmp-*`` that replaces ``DATASET`` by a
rename at the end (envs/outputs.py); a failed build removes it and leaves the previous dataset as it was.
``--out`` is checked first: a file, an unwritable path or a non-empty folder that is not a dataset is
refused.

**Several folders.** ``raw`` may be several raw-log folders (``--raw A B``): they are merged file by file
so that every row counts once, whatever is given twice; two versions of one day's file, or folders of two
sites, are refused by name (offline_data/sources.py). The manifest's ``merge`` lists the folders and the
files taken once, and ``logging`` which controller logged each day and the bound of its exploration
(``RAW/_logging``, written by ``gridrl data generate``).

**One site.** The manifest records the site the dataset was built with (name, file, sha256 of its
settings). A rebuild with another site is refused, naming both, unless ``force`` (``--force``) asks for a
build from scratch: the actions of earlier days would otherwise be scaled by another power limit.

Memory: one day per worker and stage at a time (offline_data/stages.py); per-day files stream into the
split writers. Peak memory does not grow with the number of days (tests/benchmarks/bench_offline_data.py
measures it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from envs.config import to_mapping
from envs.outputs import OutputKind, check_output, staged_output
from envs.reward import RewardWeights
from envs.site import Site, load_site
from envs.state_spec import spec_dict
from offline_data.align import AlignConfig
from offline_data.progress import Progress
from offline_data.rawio import RawFile, RawLogError
from offline_data.schemas import SCHEMA_VERSION, STREAMS
from offline_data.sources import Folder, as_folders, discover_all, logging_summary, merge, resolve_site
from offline_data.split import SPLITS, SplitWriter, Stats, boundaries
from offline_data.stages import align_one, features_one, make_pool, run_stage, validate_day
from offline_data.transitions import (
    STEPS_SCHEMA,
    TRANSITION_SCHEMA,
    TRANSITIONS_VERSION,
    column_stats,
    transitions,
)

PIPELINE_VERSION = "offline-data-1"
DATASET_VERSION = "gridrl-dataset-v1"
DATASET_OUTPUT = OutputKind(
    "a gridrl dataset", ("manifest.json",), json_key=("manifest.json", "dataset_version")
)


@dataclass(frozen=True)
class BuildConfig:
    """Settings of ``gridrl data build`` (``--config FILE.yaml`` holds the same keys)."""

    lookahead: int = 5
    """k of the k-step lookahead target (lookahead_obs, lookahead_actions)."""
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    """Shares of train, val and test, in time order."""
    align: AlignConfig = field(default_factory=AlignConfig)
    """Staleness limits and the shortest episode."""
    site: str | None = None
    """Site YAML (for the action scale); None = RAW/site.yaml if present, else the shipped default site."""
    reward: RewardWeights = field(default_factory=RewardWeights)
    """Reward weights (envs/reward.py)."""
    row_group_rows: int = 262_144
    """Rows per Parquet row group of the split files."""
    rows_per_file: int = 2_097_152
    """Rows per split file before a new one is started."""

    def __post_init__(self) -> None:
        if self.lookahead < 1:
            raise ValueError(f"lookahead: must be >= 1, got {self.lookahead}")
        if len(self.split) != 3 or any(s < 0 for s in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"split: three non-negative shares summing to 1, got {self.split}")
        if self.align.min_episode_s < 2:
            raise ValueError("align: min_episode_s must be >= 2 (an episode needs one step)")
        for name in ("max_meter_staleness_s", "max_pi_staleness_s"):
            if getattr(self.align, name) < 0:
                raise ValueError(f"align: {name} must be >= 0, got {getattr(self.align, name)}")
        for name in ("row_group_rows", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


class BuildError(RuntimeError):
    """The build cannot proceed (the message says why); the previous dataset is untouched."""


def site_record(site: Site, path: Path) -> dict:
    """What a dataset records of its site: name, file and the sha256 of its settings (not of the file's
    bytes: a comment does not change a site)."""
    body = json.dumps(to_mapping(site), sort_keys=True).encode()
    return {"name": site.name, "path": str(path), "sha256": hashlib.sha256(body).hexdigest()}


def _check_same_site(out: Path, old: dict, new: dict) -> None:
    was = old.get("site")
    if was and was.get("sha256") != new["sha256"]:
        raise BuildError(
            f"{out}: this dataset was built with site {was['name']!r} ({was['path']}); this build uses site "
            f"{new['name']!r} ({new['path']}). Refusing to mix two sites in one dataset: build into another "
            "--out, or pass --force to rebuild this one from scratch with the new site"
        )


def _day_key(date: str, streams: dict[str, list[RawFile]], sources: dict, settings: dict) -> str:
    body = {
        "pipeline": PIPELINE_VERSION,
        "settings": settings,
        "files": sorted((f.rel, sources[f.rel]["sha256"]) for fs in streams.values() for f in fs),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _link_tree(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        os.link(src, dst)


def _read_steps(root: Path, date: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(
        root / "cache" / f"date={date}" / "steps.parquet",
        columns=columns,
        schema=STEPS_SCHEMA if columns is None else None,
    )


def _iso(second: int | None) -> str | None:
    return (
        None
        if second is None
        else dt.datetime.fromtimestamp(second, dt.UTC).isoformat().replace("+00:00", "Z")
    )


def build(
    raw: Path | Sequence[Path],
    out: Path,
    cfg: BuildConfig,
    seed: int = 0,
    command_line: list[str] | None = None,
    progress: bool = True,
    workers: int = 1,
    force: bool = False,
) -> dict:
    """Build ``out`` from ``raw``, one raw-log folder or several (see the module docstring); returns the
    manifest.

    ``workers`` > 1 runs the per-day stages in that many processes (offline_data/stages.py); the
    dataset is the same for any number of workers.

    ``force`` rebuilds from scratch (nothing reused) and may replace a dataset of another site.

    Raises:
        RawLogError: a raw file cannot be used (the message names the file and the column); two raw
            folders hold two versions of one file, or are of two sites (naming both).
        OutputError: ``out`` is a file, cannot be written, or is a non-empty folder that is not a dataset.
        BuildError: ``out`` is a dataset of another site, or there is nothing to split.
    """
    raws, out = as_folders(raw), Path(out)
    t_start = time.perf_counter()
    folders = discover_all(raws)
    out = check_output(out, DATASET_OUTPUT, update=True)
    old = _old_manifest(out)
    site_path = resolve_site(cfg.site, raws)
    site = load_site(site_path)
    site_info = site_record(site, site_path)
    if force:
        old = {}
    else:
        _check_same_site(out, old, site_info)
    max_w = site.control.max_power_per_phase_w
    settings = {
        "raw_schema": SCHEMA_VERSION,
        "spec": spec_dict()["sha256"],
        "align": asdict(cfg.align),
        "reward": asdict(cfg.reward),
        "max_power_per_phase_w": max_w,
        "latitude_deg": site.latitude_deg,  # the state's solar and clear-sky features depend on the place
        "longitude_deg": site.longitude_deg,
    }
    with staged_output(out, DATASET_OUTPUT, update=True) as tmp:
        manifest = _build_into(tmp, folders, out, old, cfg, settings, max_w, progress, workers)
        manifest.update(
            {
                "dataset_version": DATASET_VERSION,
                "raw_schema_version": SCHEMA_VERSION,
                "transitions_version": TRANSITIONS_VERSION,
                "pipeline_version": PIPELINE_VERSION,
                "state_spec": {"version": spec_dict()["version"], "sha256": spec_dict()["sha256"]},
                "transition_schema": {f.name: str(f.type) for f in TRANSITION_SCHEMA},
                "site": site_info,
                "command_line": command_line or [],
                "seed": seed,
                "config": to_mapping(cfg) | {"site_resolved": str(site_path)},
                "created_utc": _iso(int(time.time())),
                "build_seconds": round(time.perf_counter() - t_start, 3),
            }
        )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _old_manifest(out: Path) -> dict:
    path = out / "manifest.json"
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: the previous dataset's manifest cannot be read ({exc})") from exc
    return old if isinstance(old, dict) else {}


def _build_into(
    tmp: Path,
    folders: list[Folder],
    out: Path,
    old: dict,
    cfg: BuildConfig,
    settings: dict,
    max_w: float,
    progress: bool,
    workers: int,
) -> dict:
    merged = merge(folders, old, progress)
    days, sources = merged.days, merged.sources
    keys = {date: _day_key(date, streams, sources, settings) for date, streams in days.items()}
    old_days = old.get("days", {}).get("keys", {})
    reuse = [
        d for d in days if old_days.get(d) == keys[d] and (out / "cache" / f"date={d}" / "day.json").is_file()
    ]
    todo = [d for d in days if d not in reuse]
    for d in reuse:
        _link_tree(out / "cache" / f"date={d}", tmp / "cache" / f"date={d}")
        for name in STREAMS:
            q = out / "quarantine" / name / f"date={d}.parquet"
            if q.is_file():
                _link_tree(q, tmp / "quarantine" / name / f"date={d}.parquet")
    scratch = tmp / "_scratch"
    pool = make_pool(min(workers, len(todo)))
    try:
        v_counts = run_stage(
            "validate", validate_day, todo, lambda d: (days[d], scratch, tmp), pool, progress
        )
        a_counts = run_stage("align", align_one, todo, lambda d: (scratch, cfg.align), pool, progress)
        f_counts = run_stage(
            "features",
            features_one,
            todo,
            lambda d: (scratch, tmp, max_w, cfg.reward, settings["latitude_deg"], settings["longitude_deg"]),
            pool,
            progress,
        )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    shutil.rmtree(scratch, ignore_errors=True)
    for d in todo:
        day = {"key": keys[d], "validate": v_counts[d], "align": a_counts[d], "features": f_counts[d]}
        (tmp / "cache" / f"date={d}" / "day.json").write_text(json.dumps(day, indent=1))
    day_info = {d: json.loads((tmp / "cache" / f"date={d}" / "day.json").read_text()) for d in days}
    manifest = _split_and_write(tmp, days, day_info, keys, todo, reuse, sources, cfg, progress)
    manifest["merge"] = merged.summary()
    manifest["logging"] = logging_summary(folders, list(days))
    return manifest


def _split_and_write(
    tmp: Path,
    days: dict,
    info: dict,
    keys: dict,
    todo: list[str],
    reuse: list[str],
    sources: dict,
    cfg: BuildConfig,
    progress: bool,
) -> dict:
    order = list(days)
    counts = [(d, info[d]["features"]["steps"]) for d in order]
    if sum(n for _, n in counts) < 2:
        raise BuildError(
            f"no episode survived validation and alignment: nothing to split. {_why_empty(tmp, info)}"
        )
    with Progress("split", 1, "step", progress) as bar:
        cuts = boundaries(counts, cfg.split, lambda d: _read_steps(tmp, d, ["second"])["second"].to_numpy())
        bar.update(1, f"cuts at {_iso(cuts[0])}, {_iso(cuts[1])}")
    writers = {s: SplitWriter(tmp, s, cfg.row_group_rows, cfg.rows_per_file) for s in SPLITS}
    stats = Stats()
    dropped = 0
    with Progress("write", len(order), "days", progress) as bar:
        for d in order:
            steps = _read_steps(tmp, d)
            parts = transitions(steps, d, cfg.lookahead, cuts)
            dropped += max(
                0,
                steps.num_rows
                - sum(t.num_rows for t in parts.values())
                - len(np.unique(steps["episode"].to_numpy())),
            )
            for p, table in parts.items():
                writers[SPLITS[p]].add(table)
                if p == 0:
                    stats.add(column_stats(table))
            bar.update(1, d)
    split_info = {s: w.close() for s, w in writers.items()}
    for s in split_info.values():
        s["time_span"] = [_iso(x) for x in s.pop("time_span_s")]
    (tmp / "normalization.json").write_text(json.dumps(stats.normalization(), indent=2) + "\n")
    return _manifest(days, info, keys, todo, reuse, sources, split_info, cuts, dropped)


def _why_empty(tmp: Path, info: dict) -> str:
    """What the quarantine and the alignment say, for a build that is left with nothing (the quarantine
    folder goes with the failed build, so the message carries it)."""
    parts = []
    for name in STREAMS:
        rows_in = sum(i["validate"][name]["rows_in"] for i in info.values())
        reasons: dict[str, int] = {}
        for i in info.values():
            for r, n in i["validate"][name]["quarantined_by_reason"].items():
                reasons[r] = reasons.get(r, 0) + n
        if reasons:
            top = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
            parts.append(f"{name}: {sum(reasons.values())} of {rows_in} rows quarantined ({top})")
    dropped: dict[str, int] = {}
    for i in info.values():
        for r, n in i["align"].get("dropped_seconds", {}).items():
            dropped[r] = dropped.get(r, 0) + n
    if dropped:
        parts.append(
            "alignment dropped seconds: " + ", ".join(f"{r} {n}" for r, n in sorted(dropped.items()))
        )
    first = sorted(tmp.glob("quarantine/*/date=*.parquet"))
    for path in first:
        q = pq.read_table(path, columns=["file", "row", "reason", "column"]).slice(0, 1).to_pylist()
        if q:
            r = q[0]
            col = f", column {r['column']}" if r["column"] else ""
            parts.append(f"first quarantined row: {r['file']} row {r['row']}: {r['reason']}{col}")
            break
    return "; ".join(parts) or "no rows were quarantined; the episodes were shorter than --min-episode"


def _manifest(
    days: dict,
    info: dict,
    keys: dict,
    todo: list[str],
    reuse: list[str],
    sources: dict,
    split_info: dict,
    cuts: tuple[int, int],
    dropped: int,
) -> dict:
    per_stream: dict[str, dict] = {}
    for d in days:
        for name, c in info[d]["validate"].items():
            acc = per_stream.setdefault(
                name,
                {
                    "rows_in": 0,
                    "rows_used": 0,
                    "rows_quarantined": 0,
                    "quarantined_by_reason": {},
                    "repaired": {},
                },
            )
            for k in ("rows_in", "rows_used", "rows_quarantined"):
                acc[k] += c[k]
            for group in ("quarantined_by_reason", "repaired"):
                for r, n in c[group].items():
                    acc[group][r] = acc[group].get(r, 0) + n
    for name, c in per_stream.items():
        if c["rows_in"] != c["rows_used"] + c["rows_quarantined"]:
            raise BuildError(f"{name}: counts do not add up: {c}")
    align = {
        "grid_seconds": 0,
        "episode_seconds": 0,
        "episodes": 0,
        "pi_filled_seconds": 0,
        "dropped_seconds": {},
    }
    for d in days:
        a = info[d]["align"]
        for k in ("grid_seconds", "episode_seconds", "episodes", "pi_filled_seconds"):
            align[k] += a.get(k, 0)
        for r, n in a.get("dropped_seconds", {}).items():
            align["dropped_seconds"][r] = align["dropped_seconds"].get(r, 0) + n
    firsts = [
        info[d]["features"]["first_second"] for d in days if info[d]["features"]["first_second"] is not None
    ]
    lasts = [
        info[d]["features"]["last_second"] for d in days if info[d]["features"]["last_second"] is not None
    ]
    return {
        "sources": [sources[k] for k in sorted(sources)],
        "counts": {
            k: {x: per_stream[k][x] for x in ("rows_in", "rows_used", "rows_quarantined")} for k in STREAMS
        },
        "stages": {
            "validate": per_stream,
            "align": align,
            "features": {"steps": sum(info[d]["features"]["steps"] for d in days)},
            "transitions": {
                "rows": {s: split_info[s]["rows"] for s in SPLITS},
                "dropped_at_split_cuts": dropped,
            },
        },
        "time_span": {
            "first_second": _iso(min(firsts)),
            "last_second": _iso(max(lasts)),
            "split_cuts": [_iso(c) for c in cuts],
            "split_cuts_s": list(cuts),
        },
        "splits": split_info,
        "days": {"all": list(days), "processed": todo, "reused": reuse, "keys": keys},
    }


__all__ = ["BuildConfig", "BuildError", "RawLogError", "build"]
