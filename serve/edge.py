"""The edge runtime: a bundle behind the safety wrapper, on a box with numpy and onnxruntime (no Ray, torch).

Each second :meth:`EdgeController.step`:

1. reads the meter (:class:`Meter`) and the slaves' status (:class:`Coordinator`);
2. builds the signals row (envs/state_spec.py ``SIGNALS``) and advances the streaming feature kernel
   :func:`envs.state_spec.feature_row`, the very code the simulator runs, to get the state vector
   (rounded to float32, as the env's observation space is: controllers see what they were trained on);
3. asks the :class:`~serve.safety.SafetyWrapper` (the bundle's policy, the PI fallback) for targets;
4. turns the per-phase targets into per-slave commands with :func:`envs.dispatch.dispatch_row`, the
   simulator's own dispatcher, and hands them to the coordinator;
5. appends one JSON line to the decision log (rotated by size, :class:`DecisionLog`).

Adapters for real hardware implement two protocols:

* :class:`Meter` ``read() -> MeterReading``: blocks until the next 1 Hz reading; per-phase grid export
  (W, export positive) and PV power, NaN for a reading that did not arrive (the feature kernel holds the
  last one and counts its age), and the reading's UTC time in seconds (the wrapper's clock: its
  fallback timers run on meter time).
* :class:`Coordinator` (the Zigbee coordinator) ``status() -> SlaveStatus``: per slave, in the order of
  the site file's ``slaves``: available (0/1), on (0/1), seconds in that on/off state, and the last
  acknowledged command (W). ``send(commands_w, targets_w)``: transmit per-slave commands (W); like the
  simulated master (envs/simulator.py, step 2) it sends a command when it changed by more than
  ``site.control.deadband_w`` and resends an unacknowledged one after ``site.link.retry_after_s``.
  ``targets_w`` are the per-phase targets the commands came from, for coordinators that log them.

:class:`SimulatedSite` implements both on the simulator (the default of ``gridrl edge``): it draws the
day exactly as ``ExportControlEnv.reset(seed)`` does, so a seed gives the same day as ``gridrl
simulate`` / ``gridrl evaluate``; the simulator re-dispatches the targets with the same kernel, and
tests check that the commands agree. :func:`run_simulated` writes ``DIR/metrics.json`` in ``gridrl
simulate``'s format (``{name: {metric: value}}``), ``DIR/checks.json`` (how often each check fired and
each source acted), ``DIR/traces/NAME.parquet`` and ``DIR/decisions.jsonl`` (+ rotated ``.1``, ``.2``...).

A trace's ``safety_violation`` is 1 in a second where the wrapper caught a violation of the policy
(``policy_error``, ``policy_deadline``, ``policy_output``) or the target sent was outside the bounds
(impossible by construction; the simulator's own check); ``fallback`` is 1 where the PI (or the safe
ramp-down) acted instead of the bundle's controller.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from envs.dispatch import SP_MAX_W, SP_PHASE, dispatch_row, slave_table
from envs.simulator import (
    O_BASE,
    O_CHANGES,
    O_CTRL,
    O_EXPORT_L,
    O_IMPORT_CTRL,
    O_METER,
    O_METER_PV,
    O_PV,
    OUT_SIZE,
    SS_ACK_VAL,
    SS_AVAIL,
    SS_IS_ON,
    SS_TIS,
)
from envs.site import DEFAULT_SITE_PATH, Site, load_site
from envs.state_spec import N_FEATURES, N_SIGNALS, feature_row, new_kernel_state
from serve.bundle import Bundle, load_bundle
from serve.safety import VIOLATIONS, Decision


@dataclass
class MeterReading:
    """One 1 Hz reading of the grid and PV meters."""

    time_s: float
    """UTC Unix time of the reading (s)."""
    export_w: np.ndarray
    """(3,) grid export per phase, W, export positive; NaN where missing."""
    pv_w: np.ndarray
    """(3,) PV power per phase, W; NaN where missing."""


@dataclass
class SlaveStatus:
    """What the coordinator knows of each slave, in the site file's order."""

    available: np.ndarray
    """(S,) 1 if the slave can take power now (EV plugged and not full, tank not full), else 0."""
    is_on: np.ndarray
    """(S,) 1 if the slave draws power."""
    time_in_state_s: np.ndarray
    """(S,) seconds since it last switched on or off."""
    acked_w: np.ndarray
    """(S,) its last acknowledged command, W."""


class Meter(Protocol):
    def read(self) -> MeterReading:
        """Block until the next reading and return it."""


class Coordinator(Protocol):
    def status(self) -> SlaveStatus:
        """The slaves' current status."""

    def send(self, commands_w: np.ndarray, targets_w: np.ndarray) -> None:
        """Transmit per-slave commands (W) decided from per-phase targets ``targets_w`` (W)."""


class DecisionLog:
    """One JSON line per decision, rotated by size: ``PATH``, ``PATH.1`` ... ``PATH.<backups>``."""

    def __init__(self, path: str | Path, max_bytes: int = 5_000_000, backups: int = 3):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self.handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger = logging.Logger(f"gridrl.edge.{path}")  # not registered globally
        self.logger.propagate = False
        self.logger.addHandler(self.handler)

    def write(self, time_s: float, decision: Decision, commands_w: np.ndarray) -> None:
        self.logger.info(
            json.dumps(
                {
                    "time_s": time_s,
                    "source": decision.source,
                    "checks": list(decision.checks_fired),
                    "action_w": [round(float(v), 1) for v in decision.action_w],
                    "commands_w": [round(float(v), 1) for v in commands_w],
                    "z_max": round(decision.z_max, 2) if np.isfinite(decision.z_max) else None,
                    "policy_ms": round(decision.policy_s * 1e3, 3),
                    "fallback_until": decision.fallback_until
                    if np.isfinite(decision.fallback_until)
                    else None,
                }
            )
        )

    def close(self) -> None:
        self.handler.close()


@dataclass
class EdgeStep:
    """What one second of the loop did."""

    state: np.ndarray
    decision: Decision
    commands_w: np.ndarray


class EdgeController:
    """The 1 Hz control loop around a bundle (see the module docstring).

    Args:
        bundle: A loaded bundle (:func:`serve.bundle.load_bundle`).
        site: The site: slaves (for dispatch), setpoint; its action bound must match the bundle's.
        meter, coordinator: The adapters.
        log: Optional decision log.
        timer: Wall clock for the policy deadline (tests pass a fake).
    """

    def __init__(
        self,
        bundle: Bundle,
        site: Site,
        meter: Meter,
        coordinator: Coordinator,
        log: DecisionLog | None = None,
        timer: Any = time.perf_counter,
    ):
        bundle.check_site(site)
        self.bundle, self.site, self.meter, self.coordinator, self.log = bundle, site, meter, coordinator, log
        self.params = slave_table(site)
        self.phase = self.params[:, SP_PHASE].astype(np.intp)
        self.max_w = self.params[:, SP_MAX_W]
        self.now = 0.0
        self.wrapper = bundle.make_wrapper(clock=lambda: self.now, timer=timer)
        self.reset()

    def reset(self) -> None:
        """Start afresh: feature kernel, previous targets, the wrapper's timers."""
        kstate, ring = new_kernel_state(1, self.site.latitude_deg, self.site.longitude_deg)
        self.kstate, self.ring = kstate[0], ring[0]
        self.sig = np.zeros(N_SIGNALS)
        self.features = np.zeros(N_FEATURES)
        self.commands = np.zeros(len(self.site.slaves))
        self.prev_targets = np.zeros(3)
        self.wrapper.reset()

    def signals(self, reading: MeterReading, status: SlaveStatus) -> np.ndarray:
        """The signals row (envs/state_spec.py SIGNALS) of this second."""
        sig = self.sig
        sig[0:3] = reading.export_w
        sig[3:6] = reading.pv_w
        sig[6:9] = self.prev_targets
        sig[9:12] = np.bincount(self.phase, np.asarray(status.acked_w, np.float64), minlength=3)
        sig[12:15] = np.bincount(
            self.phase, np.asarray(status.available, np.float64) * self.max_w, minlength=3
        )
        sig[15] = self.site.control.export_setpoint_w
        sig[16] = reading.time_s
        return sig

    def step(self) -> EdgeStep:
        """Read, decide, dispatch, send, log: one second of control."""
        reading = self.meter.read()
        status = self.coordinator.status()
        self.now = float(reading.time_s)
        feature_row(self.signals(reading, status), self.kstate, self.ring, self.features)
        state = self.features.astype(np.float32).astype(np.float64)
        decision = self.wrapper.decide(state)
        dispatch_row(
            decision.action_w,
            np.asarray(status.available, np.float64),
            np.asarray(status.is_on, np.float64),
            np.asarray(status.time_in_state_s, np.float64),
            self.params,
            self.commands,
        )
        self.coordinator.send(self.commands, decision.action_w)
        self.prev_targets = decision.action_w
        if self.log is not None:
            self.log.write(self.now, decision, self.commands)
        return EdgeStep(state, decision, self.commands.copy())


class SimulatedSite:
    """The simulator as a :class:`Meter` and a :class:`Coordinator`, recording a trace for the metrics."""

    def __init__(
        self,
        site_path: str | None,
        scenario: str,
        episode_s: int,
        start_s: int,
        seed: int,
        record_events: bool = False,
    ):
        from envs.export_env import ExportControlEnv, ExportEnvConfig

        cfg = ExportEnvConfig(
            site=site_path,
            scenario=scenario,
            episode_s=episode_s,
            start_s=start_s,
            record_events=record_events,
        )
        self.env = ExportControlEnv(cfg)
        _, self.info = self.env.reset(seed=seed)
        self.sim = self.env.sim
        self.n = episode_s
        self.rows = np.zeros((episode_s, OUT_SIZE))
        self.targets = np.zeros((episode_s, 3))
        self.commands = np.zeros((episode_s, self.sim.n_slaves))

    @property
    def done(self) -> bool:
        return self.sim.done

    def read(self) -> MeterReading:
        m = (
            self.sim.meter0[0]
            if self.sim.t == 0
            else np.concatenate(
                [self.sim.out[0, O_METER : O_METER + 3], self.sim.out[0, O_METER_PV : O_METER_PV + 3]]
            )
        )
        return MeterReading(float(self.sim.time0[0] + self.sim.t), m[:3].copy(), m[3:].copy())

    def status(self) -> SlaveStatus:
        ss = self.sim.ss[0]
        return SlaveStatus(
            ss[:, SS_AVAIL].copy(), ss[:, SS_IS_ON].copy(), ss[:, SS_TIS].copy(), ss[:, SS_ACK_VAL].copy()
        )

    def send(self, commands_w: np.ndarray, targets_w: np.ndarray) -> None:
        k = self.sim.t
        self.targets[k] = targets_w
        self.commands[k] = commands_w
        self.sim.step(np.asarray(targets_w, np.float64).reshape(1, 3))  # re-dispatched by the same kernel
        self.rows[k] = self.sim.out[0]

    def frame_columns(self) -> dict[str, np.ndarray]:
        """Per-second columns, named as envs/rollout.py names them."""
        cols: dict[str, np.ndarray] = {
            "t": np.arange(1, self.n + 1),
            "time_s": self.sim.time0[0] + np.arange(1, self.n + 1),
        }
        for name, base in (("pv_w", O_PV), ("base_w", O_BASE), ("ctrl_w", O_CTRL), ("export_w", O_EXPORT_L)):
            for p in range(3):
                cols[f"{name}_l{p + 1}"] = self.rows[:, base + p]
        for p in range(3):
            cols[f"target_w_l{p + 1}"] = self.targets[:, p]
        cols["command_changes"] = self.rows[:, O_CHANGES].astype(np.int32)
        cols["controlled_import_w"] = self.rows[:, O_IMPORT_CTRL]
        return cols


def run_simulated(
    bundle_path: str | Path,
    out: str | Path,
    day_seeds: list[int],
    site_path: str | None = None,
    scenario: str = "broken_clouds",
    episode_s: int = 86_400,
    start_s: int = 0,
    log_max_bytes: int = 5_000_000,
    log_backups: int = 3,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Run a bundle under the edge loop on simulated days; write metrics, checks, trace and decision log."""
    import polars as pl

    from envs.metrics import add_gap_closed, metrics_of_record

    bundle = load_bundle(bundle_path)
    site = load_site(site_path)
    bundle.check_site(site, source=str(site_path or DEFAULT_SITE_PATH))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = DecisionLog(out / "decisions.jsonl", log_max_bytes, log_backups)
    frames, checks, sources = [], {}, {}
    try:
        for d, seed in enumerate(day_seeds):
            t0 = time.perf_counter()
            sim = SimulatedSite(site_path, scenario, episode_s, start_s, seed)
            edge = EdgeController(bundle, site, sim, sim, log)
            fallback = np.zeros(episode_s, np.int8)
            violation = np.zeros(episode_s, np.int8)
            for k in range(episode_s):
                dec = edge.step().decision
                fallback[k] = dec.source != "policy"
                violation[k] = any(c in VIOLATIONS for c in dec.checks_fired)
                sources[dec.source] = sources.get(dec.source, 0) + 1
                for c in dec.checks_fired:
                    checks[c] = checks.get(c, 0) + 1
            cols = sim.frame_columns()
            bad = ~np.all((sim.targets >= 0) & (sim.targets <= bundle.max_power_per_phase_w), axis=1)
            cols.update(safety_violation=np.maximum(violation, bad.astype(np.int8)), fallback=fallback)
            frames.append(pl.DataFrame(cols).with_columns(pl.lit(d).alias("day")))
            if progress:
                print(
                    f"[edge] day {d + 1}/{len(day_seeds)} ({sim.info['scenario']}, day-of-year "
                    f"{sim.info['day_of_year']}) {bundle.name}: {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        log.close()
    trace = pl.concat(frames)
    (out / "traces").mkdir(exist_ok=True)
    trace.write_parquet(out / "traces" / f"{bundle.name}.parquet")
    results = {bundle.name: metrics_of_record(trace)}
    add_gap_closed(results)  # NaN alone: as in gridrl simulate's metrics.json, every metric of record
    (out / "metrics.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    (out / "checks.json").write_text(
        json.dumps(
            {"decisions": int(sum(sources.values())), "sources": sources, "checks_fired": checks}, indent=2
        )
    )
    return results
