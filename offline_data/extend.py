"""A dataset extended with new logs, into a new folder: the dataset it came from is left as it was.

``gridrl retrain`` merges new logs (``gridrl data generate`` folders, an operator's exports, Serve's
``LOG_DIR/raw/<site_id>``) into the dataset the old policy was trained on. The merge is ``gridrl data
build``'s (offline_data/sources.py: every row counts once, two versions of one day's file or two sites
are refused by name), run on the raw folders the dataset was built from (its manifest's ``merge.raw``)
followed by the new ones, with the dataset's own build settings (its manifest's ``config``, the site
included). The dataset is first linked (hard links; copied across file systems) into ``out``, so its
days are reused rather than rebuilt, and the build replaces ``out`` atomically; the source dataset's
files are only read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.config import ConfigError, from_mapping
from offline_data.build import DATASET_VERSION, BuildConfig, BuildError, build
from offline_data.rawio import RawLogError


def read_dataset_manifest(dataset: str | Path, flag: str = "--dataset") -> dict[str, Any]:
    """The manifest of a gridrl dataset; BuildError naming the file and what is wrong otherwise."""
    path = Path(dataset) / "manifest.json"
    if not Path(dataset).is_dir():
        raise BuildError(f"{flag} {dataset}: not found (a dataset is the folder gridrl data build writes)")
    if not path.is_file():
        raise BuildError(f"{flag} {dataset}: not a gridrl dataset (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot be read ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("dataset_version") != DATASET_VERSION:
        got = manifest.get("dataset_version") if isinstance(manifest, dict) else None
        raise BuildError(f"{path}: dataset_version is {got!r}, this gridrl builds {DATASET_VERSION!r}")
    return manifest


def source_folders(dataset: str | Path, manifest: dict[str, Any]) -> list[Path]:
    """The raw folders ``dataset`` was built from (``merge.raw``), each still there; BuildError otherwise."""
    path = Path(dataset) / "manifest.json"
    merge = manifest.get("merge")
    raws = merge.get("raw") if isinstance(merge, dict) else None
    if not isinstance(raws, list) or not raws:
        raise BuildError(
            f"{path}: merge.raw does not name the raw folders it was built from (a dataset of an older "
            "gridrl): rebuild it with gridrl data build --raw ..."
        )
    gone = [r for r in raws if not Path(r).is_dir()]
    if gone:
        raise BuildError(
            f"{path}: merge.raw names {', '.join(gone)}, which is no longer there: the merge rebuilds the "
            "dataset from the raw logs it was built from, and the new ones"
        )
    return [Path(r) for r in raws]


def build_config_of(dataset: str | Path, manifest: dict[str, Any]) -> BuildConfig:
    """The settings ``dataset`` was built with (its manifest's ``config``, the site it resolved)."""
    path = Path(dataset) / "manifest.json"
    cfg = manifest.get("config")
    if not isinstance(cfg, dict):
        raise BuildError(f"{path}: config (the build settings) is missing")
    data = {k: v for k, v in cfg.items() if k != "site_resolved"}
    data["site"] = cfg.get("site_resolved") or cfg.get("site")
    try:
        return from_mapping(BuildConfig, data, source=f"{path}: config")
    except (ConfigError, ValueError) as exc:
        raise BuildError(str(exc)) from exc


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def extend_dataset(
    dataset: str | Path,
    logs: Sequence[str | Path],
    out: str | Path,
    seed: int = 0,
    progress: bool = False,
    command_line: list[str] | None = None,
) -> dict[str, Any]:
    """Build ``out``: ``dataset`` plus the raw folders ``logs`` (module docstring). Returns
    ``{"manifest": the new manifest, "before": ..., "after": ..., "raw": [...], "days_added": [...]}``.

    Raises:
        BuildError: ``dataset`` is not a dataset, or its raw folders are gone; ``out`` holds something.
        RawLogError: a log folder is missing or is not raw logs; two versions of one day's file; the new
            logs are of another site than the dataset (naming the folder and both sites).
    """
    dataset, out = Path(dataset), Path(out)
    old = read_dataset_manifest(dataset)
    raws = source_folders(dataset, old)
    cfg = build_config_of(dataset, old)
    for log in logs:  # named before anything is linked
        if not Path(log).exists():
            raise RawLogError(Path(log), None, "log folder not found (--logs)")
    if out.exists():
        raise BuildError(f"{out}: exists; the extended dataset is written to a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dataset, out, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".*.tmp-*"))
    try:
        manifest = build([*raws, *[Path(p) for p in logs]], out, cfg, seed=seed, progress=progress,
                         command_line=command_line)  # fmt: skip
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    before = set(old.get("days", {}).get("all", []))
    return {
        "manifest": manifest,
        "raw": manifest["merge"]["raw"],
        "days_added": [d for d in manifest["days"]["all"] if d not in before],
        "before": {"counts": old.get("counts"), "transitions": old["stages"]["transitions"]["rows"]},
        "after": {"counts": manifest["counts"], "transitions": manifest["stages"]["transitions"]["rows"]},
        "same_content_skipped": len(manifest["merge"]["same_content"]),
    }
