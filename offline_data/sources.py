"""The raw logs a dataset is built from: one or more raw folders, merged so that every row counts once.

``gridrl data build --raw A B ...`` builds one dataset from several raw-log folders: the simulated logs of
``gridrl data generate``, an operator's exported logs, the raw streams of Serve's decision log
(``LOG_DIR/raw/<site_id>``, serve/decision_log.py). The folders are merged file by file, per stream and
day partition, in the order given:

* **Identity is content.** A file whose bytes (sha256) were already taken for the same stream and day,
  from any folder, is taken once: naming a folder twice, re-merging a folder into a dataset that holds
  it (A+B, then A+B+A), or two folders that both hold a copy of the same day add nothing. Such files are
  listed in the manifest's ``merge.same_content`` with the file that was kept.
* **Two versions of one file are refused.** Two folders holding a file of the same name (without its
  extension) for the same stream and day, with other bytes (another run of the generator, another
  export, another format) hold two versions of that day's log: the build stops, naming both files. Files
  of other names for the same day (Serve's per-replica segments, an operator's ``part-1``) are
  different logs of the day and are all taken; rows that overlap between them are the validator's
  ``duplicate`` / ``duplicate_second`` / ``duplicate_seq`` quarantine (offline_data/validate.py).
* **One site.** With several folders, each folder's ``site.yaml`` (a folder without one is the site
  ``--site`` names, else the shipped default, as for a single folder) must be the same site, and so must
  ``--site`` when given: otherwise the build stops, naming the folders and the sites.
* A folder that is not raw logs is refused with what it looks like: a gridrl dataset, or the top of a
  Serve log folder (whose raw logs are under ``raw/<site_id>``).

Within one folder nothing changes: its files are taken as they are (a file's ``rel`` path,
``<stream>/date=YYYY-MM-DD/<name>``, stays what the quarantine and the defect audit use; two taken files
never share it). The manifest's ``sources`` give each file's folder (``raw``).

``RAW/_logging/date=YYYY-MM-DD.json`` (written by ``gridrl data generate``) names the controller that
logged a day and the bound of its exploration; for Serve's ``LOG_DIR/raw/<site_id>``, the decision log
beside it (``LOG_DIR/decisions``) says how many decisions the PI, the policy and the fallback sent, per
mode. :func:`logging_summary` gathers both for the manifest's ``logging``: a dataset says what behaviour
its actions come from. (A transition itself does not say which controller sent its action.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from envs.site import DEFAULT_SITE_PATH, Site, load_site
from offline_data.progress import Progress
from offline_data.rawio import RawFile, RawLogError, discover, sha256_file
from offline_data.schemas import STREAMS

LOGGING_DIR = "_logging"
"""RAW/_logging/date=YYYY-MM-DD.json: the controller that logged that day, its settings and its bound."""


@dataclass
class Folder:
    """One raw folder as given, and what :func:`~offline_data.rawio.discover` found in it."""

    given: Path
    key: str  # the resolved path: the folder's identity
    days: dict[str, dict[str, list[RawFile]]]


@dataclass
class Merged:
    """The merged partitions (``{date: {stream: [files]}}``), the sources and what the merge skipped."""

    days: dict[str, dict[str, list[RawFile]]]
    sources: dict[str, dict]  # rel -> {path, raw, bytes, mtime_ns, sha256}
    same_content: list[dict] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)

    def summary(self) -> dict:
        """The manifest's ``merge`` entry."""
        return {
            "raw": [f.key for f in self.folders],
            "files_taken": len(self.sources),
            "same_content": self.same_content,
        }


def as_folders(raw: Path | str | Sequence[Path | str]) -> list[Path]:
    """``raw`` as a list of folders (one path, or several)."""
    return [Path(raw)] if isinstance(raw, (str, Path)) else [Path(r) for r in raw]


def _not_raw_logs(folder: Path) -> None:
    """Refuse, with what it is, a folder that holds something else than raw logs."""
    if not folder.is_dir() or any((folder / s).is_dir() for s in STREAMS):
        return
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and "dataset_version" in data:
            raws = ", ".join(_manifest_raws(data)) or "not recorded"
            raise RawLogError(
                folder,
                None,
                f"is a gridrl dataset, not raw logs: pass the raw folders it was built from ({raws})",
            )
    raw = folder / "raw"
    if (folder / "decisions").is_dir() or (raw.is_dir() and (folder / "wal").is_dir()):
        sites = sorted(p.name for p in raw.iterdir() if p.is_dir()) if raw.is_dir() else []
        where = ", ".join(str(raw / s) for s in sites) or f"{raw}/<site_id> (none written yet)"
        raise RawLogError(
            folder, None, f"is a Serve decision-log folder; its raw logs are under raw/: pass {where}"
        )


def _manifest_raws(manifest: dict) -> list[str]:
    merge = manifest.get("merge")
    return list(merge.get("raw", [])) if isinstance(merge, dict) else []


def discover_all(raws: Sequence[Path]) -> list[Folder]:
    """Every folder's partitions (errors name the folder); a folder given twice is listed once."""
    folders: list[Folder] = []
    seen: set[str] = set()
    for raw in raws:
        _not_raw_logs(raw)
        days = discover(raw)
        key = str(raw.resolve())
        if key not in seen:
            seen.add(key)
            folders.append(Folder(raw, key, days))
    return folders


def _stem(f: RawFile) -> str:
    return f.path.name.rsplit(".", 1)[0]


def merge(folders: list[Folder], old: dict, progress: bool) -> Merged:
    """Hash every file (reusing the previous manifest's sha256 where size and mtime match) and merge the
    folders (module docstring).

    Raises:
        RawLogError: two folders hold two versions of one file (naming both).
    """
    many = len(folders) > 1
    prev: dict[tuple[str | None, str], dict] = {}
    for s in old.get("sources", []):
        prev[(s.get("raw"), s["path"])] = s
    files = [(fo, f) for fo in folders for streams in fo.days.values() for fs in streams.values() for f in fs]
    hashes: dict[tuple[str, str], str] = {}
    with Progress("scan", len(files), "files", progress) as bar:
        for fo, f in files:
            p = prev.get((fo.key, f.rel)) or (None if many else prev.get((None, f.rel)))
            same = p and p.get("bytes") == f.size and p.get("mtime_ns") == f.mtime_ns
            hashes[(fo.key, f.rel)] = p["sha256"] if same else sha256_file(f.path)
            bar.update(1)
    merged = Merged({}, {}, [], folders)
    for date in sorted({d for fo in folders for d in fo.days}):
        for name in STREAMS:
            _merge_partition(merged, date, name, hashes, many)
    return merged


def _merge_partition(m: Merged, date: str, name: str, hashes: dict[tuple[str, str], str], many: bool) -> None:
    """Add one stream's day partition of every folder to ``m`` (module docstring's rules)."""
    by_sha: dict[str, tuple[Folder, RawFile]] = {}
    by_stem: dict[str, tuple[Folder, RawFile]] = {}
    for fo in m.folders:
        for f in fo.days.get(date, {}).get(name, []):
            sha = hashes[(fo.key, f.rel)]
            if sha in by_sha:
                m.same_content.append({"file": str(f.path), "kept": str(by_sha[sha][1].path), "sha256": sha})
                continue
            other = by_stem.get(_stem(f))
            if other is not None and other[0] is not fo:
                what = "format" if other[1].fmt != f.fmt else "content"
                raise RawLogError(
                    f.path, None,
                    f"another version of {other[1].path} (same stream, day and file name, other {what}): the "
                    f"folders {other[0].given} and {fo.given} hold two different logs of {name} on {date}. "
                    "Merge logs of different days, or of one day under other file names; remove one version",
                )  # fmt: skip
            by_sha[sha] = by_stem[_stem(f)] = (fo, f)
            m.days.setdefault(date, {}).setdefault(name, []).append(f)
            m.sources[f.rel] = {
                "path": f.rel,
                **({"raw": fo.key} if many else {}),
                "bytes": f.size,
                "mtime_ns": f.mtime_ns,
                "sha256": sha,
            }


def _folder_site(folder: Path, fallback: Path) -> Path:
    held = folder / "site.yaml"
    return held if held.is_file() else fallback


def resolve_site(site: str | None, raws: Sequence[Path]) -> Path:
    """The site file of the build: ``site``, else the first folder's ``site.yaml``, else the default.

    With several folders, every folder's site (``site.yaml``, else ``site`` or the default) and ``site``
    itself must be the same site.

    Raises:
        RawLogError: two folders (or a folder and ``--site``) are different sites; names both.
    """
    fallback = Path(site) if site else DEFAULT_SITE_PATH
    chosen = Path(site) if site else _folder_site(raws[0], DEFAULT_SITE_PATH)
    if len(raws) < 2:
        return chosen
    ref: tuple[str, Site] = (f"--site {site}" if site else f"{raws[0]} ({chosen})", load_site(chosen))
    for folder in raws:
        path = _folder_site(folder, fallback)
        other = load_site(path)
        if other != ref[1]:
            held = path.parent == folder
            what = f"holds site {other.name!r} ({path})" if held else f"has no site.yaml: site {other.name!r}"
            raise RawLogError(
                folder, None,
                f"{what}, but {ref[0]} is site {ref[1].name!r}: one dataset holds the logs of one site "
                "(every day's actions are scaled by its power limit). Build each site into its own --out",
            )  # fmt: skip
    return chosen


SERVE_BOUND = "Serve's safety wrapper: every target within [0, the site's max_power_per_phase_w]"


def _serve_day(fo: Folder, date: str) -> dict[str, dict[str, int]] | None:
    """For Serve's raw folder ``LOG_DIR/raw/<site_id>``: who acted on ``date``, per mode, counted from
    ``LOG_DIR/decisions`` (serve/decision_log.py; one row per request id). None for other folders."""
    here = fo.given.resolve()
    decisions = here.parent.parent / "decisions" / f"date={date}"
    if here.parent.name != "raw" or not decisions.is_dir():
        return None
    files = sorted(decisions.glob("part-*.parquet"))
    if not files:
        return None
    try:
        rows = pl.concat([pl.read_parquet(f, columns=["key", "site_id", "mode", "source"]) for f in files])
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise RawLogError(decisions, None, f"Serve's decision log cannot be read ({exc})") from exc
    rows = rows.filter(pl.col("site_id") == here.name).unique("key")
    out: dict[str, dict[str, int]] = {}
    for mode, source, n in rows.group_by("mode", "source").len().sort("mode", "source").iter_rows():
        out.setdefault(str(mode), {})[str(source)] = int(n)
    return out


def logging_summary(folders: list[Folder], days: Sequence[str]) -> dict:
    """Which controller logged which day, with the bound of its exploration (``RAW/_logging``).

    Returns ``{"controllers": {name: {"bound": ..., "days": [...]}}, "unrecorded_days": [...]}``; a day
    with no record (an operator's own logs) is unrecorded. A day recorded with different settings in two
    folders is listed under each. Serve's raw folders (``LOG_DIR/raw/<site_id>``) are recorded from its
    decision log as ``serve_<mode>`` (shadow, ab, rollout, production) with ``acted``: how many decisions
    each source (pi, policy, fallback) sent.
    """
    controllers: dict[str, dict] = {}
    recorded: set[str] = set()
    for fo in folders:
        for date in days:
            path = fo.given / LOGGING_DIR / f"date={date}.json"
            served = _serve_day(fo, date) if date in fo.days and not path.is_file() else None
            for mode, acted in (served or {}).items():
                entry = controllers.setdefault(
                    f"serve_{mode}", {"bound": SERVE_BOUND, "acted": {}, "days": []}
                )
                for source, n in acted.items():
                    entry["acted"][source] = entry["acted"].get(source, 0) + n
                if date not in entry["days"]:
                    entry["days"].append(date)
                recorded.add(date)
            if date not in fo.days or not path.is_file():
                continue
            try:
                rec = json.loads(path.read_text())
                name, bound = str(rec["controller"]), str(rec["bound"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RawLogError(path, None, f"not a logging record ({type(exc).__name__}: {exc})") from exc
            same = name not in controllers or controllers[name]["bound"] == bound
            key = name if same else f"{name} ({bound})"
            entry = controllers.setdefault(key, {"bound": bound, "settings": {}, "days": []})
            entry["settings"] = {k: rec.get(k) for k in ("pi", "dither")}
            if date not in entry["days"]:
                entry["days"].append(date)
            recorded.add(date)
    return {"controllers": controllers, "unrecorded_days": [d for d in days if d not in recorded]}
