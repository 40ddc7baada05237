"""Simulated raw logs: the PI controller (or the PI with bounded exploration) runs in the export simulator
and three devices log it.

``gridrl data generate`` runs one episode per calendar day (envs/rollout.py, with command events
recorded) and writes the three streams of offline_data/schemas.py, each on its own clock:

* meter readings: every second, ``ts`` within +-0.1 s of the second the reading belongs to; a reading the
  simulator lost has no row (the counter ``seq`` skips it);
* PI state: one row per control cycle, 0.35-0.45 s after the reading the cycle reacts to;
* Zigbee commands: sent 10-50 ms after the cycle that decided them, at irregular times; the
  acknowledgement arrives within the second before the one from which the slave's new power shows in the
  state (the simulator's "applied" step); lost and superseded commands have no ``ack_ts``.

**The logging controller** (``controller``): ``pi``, the site's PI as it runs (one action per state: the
logs show what the PI does and nothing else), or ``dithered_pi``, :class:`envs.controllers.
DitheredPIController`: the PI with its gains varied per hour and a small residual held for some seconds,
within the bound that :meth:`envs.controllers.DitherConfig.bound` states (by default: kp and ki within
[0.7, 1.3] x nominal; the target never more than 300 W per phase from that PI's), or
``dithered_preference``, :class:`envs.controllers.DitheredPreferenceController`: the PI's own total every
second, split over the phases with a dispatch preference drawn every 10 minutes from {-1, 0, +1} (the logs an
offline supervisor learns from, rllib_configs/offline_supervisor.py). Their draws come from their
own generator, seeded by ``(seed, day of year)``: the same seed gives the same logs. Each day's controller,
its settings, the bound and the gains it drew are written to ``RAW/_logging/date=YYYY-MM-DD.json``; the
build copies them into the dataset's manifest.

Each simulated day is a fresh start of the site (controller cycle counter at 0, slaves at 0 W); the
generator writes it into the partition of its local date. Defects are then injected at ``--defects``
(offline_data/defects.py) and recorded in ``RAW/_defects/date=YYYY-MM-DD.jsonl``. A day depends only on
``(seed, date, window, defect rate, format, site, controller and its dither settings)``: generating more
days into the same folder leaves the earlier days as they are (they would be the same bytes), so an
incremental build sees them unchanged.

**Nothing the folder holds is overwritten.** ``RAW`` is checked first (envs/outputs.py: a file, an
unwritable path or a non-empty folder that is not a raw-log folder is refused). A raw folder holds one
site: generating with another site than ``RAW/site.yaml`` (or, without it, the shipped default site the
build would assume) is refused, naming both. The days are written into a temporary folder and moved in
only once all are simulated; a day that ``RAW`` already holds with other content (another seed, window,
defect rate or format) is refused unless ``force``, which replaces those days whole.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from envs.config import to_mapping
from envs.controllers import (
    DitherConfig,
    DitheredPIController,
    DitheredPreferenceController,
    PIController,
    PreferenceDitherConfig,
)
from envs.export_env import ExportEnvConfig
from envs.outputs import OutputError, check_output, staged_output, swap_in
from envs.profiles import DAY_S, SCENARIOS
from envs.rollout import Trace, rollout
from envs.simulator import EV_APPLIED, EV_SENT, EV_SEQ, EV_SLAVE, EV_VALUE
from envs.site import DEFAULT_SITE_PATH, Site, load_site
from envs.state_spec import FEAT
from offline_data import defects
from offline_data.rawio import RAW_OUTPUT
from offline_data.schemas import COMMANDS, METER, PI_STATE, STREAMS, arrow_schema
from offline_data.sources import LOGGING_DIR

EXT = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}
NO_DITHER = "none: the PI itself"


@dataclass(frozen=True)
class GenerateConfig:
    """What ``gridrl data generate`` simulates and how it writes it."""

    site: str | None = None
    """Site YAML (None = the shipped default site). A copy is written to RAW/site.yaml for the build."""
    days: int = 1
    """Number of consecutive days, from ``start_date``."""
    start_date: str = "2025-06-01"
    """First day (YYYY-MM-DD, within 2025: the simulator's calendar)."""
    seed: int = 0
    """Root seed; each day draws from (seed, day of year)."""
    defects: float = 0.0
    """Defect rate (see offline_data/defects.py); 0 = clean logs."""
    fmt: Literal["csv", "parquet", "jsonl"] = "csv"
    """File format of every stream."""
    hours: float = 24.0
    """Simulated hours per day (a window, for short runs; 24 = the whole day)."""
    start_hour: float | None = None
    """Local start of the window (None = midnight for whole days, 10:00 otherwise)."""
    scenario: str = "random"
    """Weather scenario of every day ('random' = drawn per day)."""
    controller: Literal["pi", "dithered_pi", "dithered_preference"] = "pi"
    """The logging controller: the plain PI, or the PI with bounded exploration (module docstring)."""
    dither: DitherConfig = field(default_factory=DitherConfig)
    """Bounds of ``dithered_pi``'s exploration (ignored otherwise)."""
    preference: PreferenceDitherConfig = field(default_factory=PreferenceDitherConfig)
    """Bounds of ``dithered_preference``'s exploration (ignored otherwise)."""

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days: must be >= 1, got {self.days}")
        first = _parse_date(self.start_date)
        last = first + dt.timedelta(days=self.days - 1)
        if first.year != 2025 or last.year != 2025:
            raise ValueError(
                f"start_date: days must lie within 2025 (the simulator's calendar), got {first}..{last}"
            )
        if not 60 <= self.episode_s <= DAY_S:
            raise ValueError(f"hours: must be within [1/60, 24], got {self.hours}")
        if self.start_s + self.episode_s > DAY_S:
            raise ValueError(
                f"start_hour: the window {self.start_hour} h + {self.hours} h does not fit in a day"
            )
        if not 0 <= self.defects <= 0.2:
            raise ValueError(f"defects: must be within [0, 0.2], got {self.defects}")
        if self.start_hour is not None and not 0 <= self.start_hour < 24:
            raise ValueError(f"start_hour: must be within [0, 24), got {self.start_hour}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        if self.scenario != "random" and self.scenario not in SCENARIOS:
            raise ValueError(
                f"scenario: must be 'random' or one of {', '.join(SCENARIOS)}, got {self.scenario!r}"
            )

    @property
    def episode_s(self) -> int:
        return int(round(self.hours * 3600))

    @property
    def start_s(self) -> int:
        if self.start_hour is not None:
            return int(round(self.start_hour * 3600))
        return 0 if self.episode_s >= DAY_S else 10 * 3600

    def dates(self) -> list[dt.date]:
        first = _parse_date(self.start_date)
        return [first + dt.timedelta(days=i) for i in range(self.days)]


def _parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"start_date: expected YYYY-MM-DD, got {text!r}") from exc


Logger = PIController | DitheredPIController | DitheredPreferenceController


def logging_controller(cfg: GenerateConfig, date: dt.date) -> Logger:
    """The controller that logs ``date``: a fresh PI, or a dithered one seeded by (seed, day of year)."""
    if cfg.controller == "pi":
        return PIController()
    seed = int(np.random.SeedSequence([cfg.seed, date.timetuple().tm_yday, 2]).generate_state(1)[0])
    if cfg.controller == "dithered_preference":
        return DitheredPreferenceController(load_site(cfg.site), cfg.preference, seed=seed)
    return DitheredPIController(cfg.dither, seed=seed)


def logging_bound(cfg: GenerateConfig) -> str:
    """The bound of ``cfg.controller``'s exploration, in words."""
    if cfg.controller == "dithered_pi":
        return cfg.dither.bound()
    if cfg.controller == "dithered_preference":
        return cfg.preference.bound()
    return NO_DITHER


def logging_record(cfg: GenerateConfig, pi: Logger) -> dict:
    """What ``RAW/_logging/date=*.json`` holds for a day that ``pi`` logged (after the day ran)."""
    if isinstance(pi, DitheredPreferenceController):
        return {
            "controller": pi.name,
            "pi": to_mapping(pi.config),
            "dither": to_mapping(pi.dither),
            "bound": pi.dither.bound(),
            "preferences": pi.preferences,
        }
    if isinstance(pi, DitheredPIController):
        return {
            "controller": pi.name,
            "pi": to_mapping(pi.nominal),
            "dither": to_mapping(pi.dither),
            "bound": pi.dither.bound(),
            "gain_factors": [list(g) for g in pi.gains],
        }
    return {"controller": pi.name, "pi": to_mapping(pi.config), "dither": None, "bound": NO_DITHER}


def simulate_day(
    cfg: GenerateConfig,
    site: Site,
    date: dt.date,
    pi: Logger | None = None,
) -> tuple[Trace, dict[str, pl.DataFrame]]:
    """Run the logging controller for one day (or window); return the trace and the three clean streams.

    The streams are typed frames with timestamps as Int64 milliseconds (``ts_ms``, ``ack_ts_ms``) and the
    helper column ``__s`` (the true UTC second each row belongs to). ``pi`` is the day's controller
    (default :func:`logging_controller`'s); after a dithered PI's day, the trace's frame has
    ``pi_target_w_l1..l3``, the targets of the PI before the residual, and ``pi.gains`` its gain factors.
    """
    doy = date.timetuple().tm_yday
    seq = np.random.SeedSequence([cfg.seed, doy])
    env_seed = int(seq.generate_state(1)[0])
    rng = np.random.default_rng(seq.spawn(1)[0])
    if pi is None:
        pi = logging_controller(cfg, date)

    def extra(k: int, obs: np.ndarray, tw: np.ndarray) -> dict:
        row = {"pi_integral_w": float(pi.state()[0])}
        if isinstance(pi, DitheredPIController):
            row |= {f"pi_target_w_l{p}": float(pi.pi_target[0, p - 1]) for p in (1, 2, 3)}
        return row

    env_cfg = ExportEnvConfig(
        site=cfg.site,
        scenario=cfg.scenario,
        episode_s=cfg.episode_s,
        start_s=cfg.start_s,
        record_events=True,
        day_of_year=doy,
    )
    trace = rollout(pi, env_cfg, seed=env_seed, extra=extra)
    return trace, clean_streams(trace, site, rng)


def _phase_cols(frame: pl.DataFrame, prefix: str) -> np.ndarray:
    return frame.select(f"{prefix}_l{p}" for p in (1, 2, 3)).to_numpy()


def clean_streams(trace: Trace, site: Site, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """The three streams the devices would have logged during ``trace`` (seconds 0..n-1 of the episode)."""
    f, n = trace.frame, trace.frame.height
    t0 = int(round(trace.time0))
    k = np.arange(n)
    sec = t0 + k
    # Meter: reading k is meter0 (k = 0) or the reading after step k-1; NaN = never reached the logger.
    readings = np.vstack(
        [
            trace.meter0[None, :],
            np.hstack([_phase_cols(f, "meter_export_w"), _phase_cols(f, "meter_pv_w")])[: n - 1],
        ]
    )
    ok = ~np.isnan(readings).any(axis=1)
    jitter = np.clip(rng.normal(0.0, 30.0, n), -100, 100)
    seq0 = int(rng.integers(100_000, 10_000_000))
    meter = pl.DataFrame(
        {
            "ts_ms": (sec * 1000 + np.round(jitter)).astype(np.int64)[ok],
            "seq": (seq0 + k)[ok],
            **{f"export_w_l{p}": readings[ok, p - 1] for p in (1, 2, 3)},
            **{f"pv_w_l{p}": readings[ok, p + 2] for p in (1, 2, 3)},
            "__s": sec[ok],
        }
    )
    # PI: cycle k decides the targets in force from second k + 1.
    pi_ms = sec * 1000 + 350 + rng.integers(0, 100, n)
    targets = _phase_cols(f, "target_w")
    ctrl = np.vstack([np.zeros((1, 3)), _phase_cols(f, "ctrl_w")[: n - 1]])
    obs = trace.obs.astype(np.float64)
    pi = pl.DataFrame(
        {
            "ts_ms": pi_ms.astype(np.int64),
            "cycle": k.astype(np.int64),
            "setpoint_w": np.full(n, site.control.export_setpoint_w),
            "error_w": obs[:n, FEAT["export_error_w"]],
            "integral_w": f["pi_integral_w"].to_numpy(),
            **{f"target_w_l{p}": targets[:, p - 1] for p in (1, 2, 3)},
            **{f"available_w_l{p}": obs[:n, FEAT[f"available_w_l{p}"]] for p in (1, 2, 3)},
            **{f"controlled_w_l{p}": ctrl[:, p - 1] for p in (1, 2, 3)},
            "__s": sec,
        }
    )
    return {METER.name: meter, PI_STATE.name: pi, COMMANDS.name: _commands(trace, site, pi_ms, rng)}


def _commands(trace: Trace, site: Site, pi_ms: np.ndarray, rng: np.random.Generator) -> pl.DataFrame:
    ev = trace.events
    t0 = int(round(trace.time0))
    sent = ev[:, EV_SENT].astype(np.int64)
    slave = ev[:, EV_SLAVE].astype(np.int64)
    value = ev[:, EV_VALUE]
    applied = ev[:, EV_APPLIED].astype(np.int64)
    prev = np.zeros(len(site.slaves))
    retry = np.zeros(len(ev), bool)
    for i in range(len(ev)):  # a retry resends the last value; a change sends a new one
        retry[i] = value[i] == prev[slave[i]]
        prev[slave[i]] = value[i]
    ack = np.where(applied >= 0, (t0 + applied) * 1000 - rng.integers(50, 450, len(ev)), -1)
    phases = np.array([s.phase for s in site.slaves])
    ids = np.array([s.id for s in site.slaves])
    return pl.DataFrame(
        {
            "ts_ms": pi_ms[sent] + rng.integers(10, 50, len(ev)),
            "slave_id": ids[slave].tolist() if len(ev) else [],
            "phase": phases[slave].astype(np.int64),
            "seq": ev[:, EV_SEQ].astype(np.int64),
            "value_w": value,
            "retry": retry,
            "ack_ts_ms": pl.Series(ack, dtype=pl.Int64).replace(-1, None),
            "__s": t0 + sent,
        },
        schema_overrides={"slave_id": pl.String},
    )


def _write(df: pl.DataFrame, path: Path, stream: str, fmt: str) -> list[str] | None:
    """Write the stream's columns; returns the text lines for text formats (for truncation)."""
    body = df.select(STREAMS[stream].names)
    if fmt == "parquet":
        pq.write_table(body.to_arrow().cast(arrow_schema(STREAMS[stream])), path, row_group_size=1 << 20)
        return None
    if fmt == "csv":
        text = body.write_csv()
    else:
        text = "".join(line + "\n" for line in _jsonl_lines(body, stream))
    return text.splitlines(keepends=True)


def _jsonl_lines(body: pl.DataFrame, stream: str) -> list[str]:
    """JSON Lines as loggers write them: numbers bare, NaN as Python writes it, garbage as strings."""
    parts = []
    for c in STREAMS[stream].columns:
        col = pl.col(c.name)
        quoted = pl.lit('"') + col.str.replace_all(r"\\", r"\\\\").str.replace_all('"', r"\"") + pl.lit('"')
        if c.kind in ("float", "int"):
            number = col.cast(pl.Float64, strict=False).is_not_null() & ~col.str.contains("(?i)nan|inf")
            val = (
                pl.when(col.is_null())
                .then(pl.lit("null"))
                .when(number)
                .then(col)
                .when(col.str.to_lowercase() == "nan")
                .then(pl.lit("NaN"))
                .otherwise(quoted)
            )
        elif c.kind == "bool":
            val = col
        else:
            val = pl.when(col.is_null()).then(pl.lit("null")).otherwise(quoted)
        parts.append(pl.lit(f'"{c.name}":') + val)
    line = pl.lit("{") + pl.concat_str(parts, separator=",") + pl.lit("}")
    return body.select(line.alias("line"))["line"].to_list()


def write_day(
    cfg: GenerateConfig,
    out: Path,
    date: dt.date,
    streams: dict[str, pl.DataFrame],
    jump_stream: str | None,
    rng: np.random.Generator,
) -> list[dict]:
    """Inject defects into one day's streams, write them, and return the sidecar rows."""
    sidecar: list[dict] = []
    for name, clean in streams.items():
        clean = clean.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__id"))
        inj = defects.plan(name, clean["__s"].to_numpy(), cfg.defects, cfg.fmt, name == jump_stream, rng)
        typed = defects.apply_typed(name, clean, inj, rng)
        cells = defects.to_cells(name, typed, inj, cfg.fmt, rng)
        written = defects.apply_rows(cells, inj, rng)
        part = out / name / f"date={date.isoformat()}"
        part.mkdir(parents=True, exist_ok=True)
        path = part / f"part-0.{EXT[cfg.fmt]}"
        lines = _write(written, path, name, cfg.fmt)
        n_rows = written.height
        if lines is not None:
            if inj.truncated and n_rows:
                last = lines[-1].rstrip("\n")
                lines[-1] = last[: int(rng.integers(1, max(2, len(last) - 1)))]
            path.write_text("".join(lines))
        rel = f"{name}/date={date.isoformat()}/{path.name}"
        sidecar += defects.records(name, rel, written, inj, n_rows)
    return sidecar


def generate(
    cfg: GenerateConfig,
    out: Path,
    progress: Callable[[int, int, str], None] | None = None,
    force: bool = False,
) -> dict:
    """Simulate and write ``cfg.days`` days under ``out``; returns a summary (rows and defects per stream).

    Raises:
        OutputError: ``out`` is refused (see the module docstring): it names the path and, for another site,
            both sites; for a day held with other content, the file.
    """
    out = check_output(out, RAW_OUTPUT, update=True)
    site_path = Path(cfg.site) if cfg.site else DEFAULT_SITE_PATH
    site = load_site(cfg.site)
    check_raw_site(out, site, site_path)
    summary: dict = {
        "controller": cfg.controller,
        "bound": logging_bound(cfg),
        "days": [],
        "rows": {},
        "defects": {},
    }

    def commit(tmp: Path, dst: Path) -> None:
        merge_raw(tmp, dst, force)

    with staged_output(out, RAW_OUTPUT, update=True, commit=commit) as tmp:
        shutil.copyfile(site_path, tmp / "site.yaml")
        for i, date in enumerate(cfg.dates()):
            pi = logging_controller(cfg, date)
            trace, streams = simulate_day(cfg, site, date, pi)
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, date.timetuple().tm_yday, 1]))
            jump = str(rng.choice(defects.JUMP_STREAMS)) if cfg.defects > 0 else None
            sidecar = write_day(cfg, tmp, date, streams, jump, rng)
            sdir = tmp / "_defects"
            sdir.mkdir(exist_ok=True)
            (sdir / f"date={date.isoformat()}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in sidecar)
            )
            ldir = tmp / LOGGING_DIR
            ldir.mkdir(exist_ok=True)
            record = json.dumps(logging_record(cfg, pi), indent=1)
            (ldir / f"date={date.isoformat()}.json").write_text(record + "\n")
            summary["days"].append(
                {"date": date.isoformat(), "scenario": trace.scenario, "time0": trace.time0}
            )
            for name, df in streams.items():
                summary["rows"][name] = summary["rows"].get(name, 0) + df.height
            for r in sidecar:
                key = f"{r['stream']}:{r['kind']}"
                summary["defects"][key] = summary["defects"].get(key, 0) + 1
            if progress:
                progress(i + 1, cfg.days, date.isoformat())
    return summary


def check_raw_site(out: Path, site: Site, site_path: Path) -> None:
    """Refuse to add logs of ``site`` to a raw folder that holds another site's (naming both)."""
    held = out / "site.yaml"
    if held.is_file():
        old, where = load_site(held), f"{held} is site {{name!r}}"
    elif out.is_dir() and any((out / s).exists() for s in STREAMS):
        old = load_site(None)
        where = f"{out} holds raw logs without site.yaml, read by the build as the default site {{name!r}}"
    else:
        return
    if old == site:
        return
    a, b = to_mapping(old), to_mapping(site)
    differ = ", ".join(k for k in a if a[k] != b.get(k))
    raise OutputError(
        out,
        where.format(name=old.name)
        + f"; --site {site_path} is site {site.name!r} (they differ in: {differ}). "
        "A raw folder holds the logs of one site (the build scales every day's actions by its power limit): "
        "refusing to mix them; generate into another --out",
    )


_DATE = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


def merge_raw(tmp: Path, out: Path, force: bool = False) -> None:
    """Move newly generated days from ``tmp`` into the raw folder ``out``; checks every file first.

    A file that ``out`` already holds with the same bytes is left alone; one with other bytes, or a day
    partition that holds other files (another format), is a conflict: refused, or with ``force`` the
    conflicting days are replaced whole (every stream, the defect sidecar and the logging record).
    """
    if not out.exists() or not any(out.iterdir()):
        swap_in(tmp, out)
        return
    files = [p.relative_to(tmp) for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != "site.yaml"]
    conflicts: list[Path] = []
    for rel in files:
        target = out / rel
        if target.exists() and (not target.is_file() or target.read_bytes() != (tmp / rel).read_bytes()):
            conflicts.append(rel)
    for part in sorted(tmp.glob("*/date=*")):
        held = out / part.relative_to(tmp)
        if held.is_dir():
            extra = sorted({x.name for x in held.iterdir()} - {x.name for x in part.iterdir()})
            conflicts += [part.relative_to(tmp) / x for x in extra]
    conflicts.sort(key=lambda rel: (rel.parts[0] in ("_defects", LOGGING_DIR), str(rel)))  # a log file first
    days = sorted({m.group(1) for rel in conflicts if (m := _DATE.search(str(rel)))})
    if conflicts and not force:
        raise OutputError(
            out,
            f"{out / conflicts[0]} already holds other logs of {', '.join(days)} (generated with another "
            "--seed, --hours, --start-hour, --defects, --scenario, --format, --controller or --dither-*, or "
            "real logs); refusing to overwrite them: generate into another --out, or pass --force to replace "
            "those days",
        )
    for day in days:
        for name in STREAMS:
            shutil.rmtree(out / name / f"date={day}", ignore_errors=True)
        (out / "_defects" / f"date={day}.jsonl").unlink(missing_ok=True)
        (out / LOGGING_DIR / f"date={day}.json").unlink(missing_ok=True)
    for rel in files:
        target = out / rel
        if target.exists():
            continue  # the same bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, target)
    if not (out / "site.yaml").exists():
        os.replace(tmp / "site.yaml", out / "site.yaml")
    shutil.rmtree(tmp, ignore_errors=True)
