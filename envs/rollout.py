"""Run a controller through the export env for whole episodes and record a trace (one row per second).

The trace is the common currency of the domain: the metrics of record (envs/metrics.py), the plots,
the raw-log generator (offline_data/) and the evaluation all read it. Every controller runs on the same
days for a given seed: the day, the weather and every random draw come from the env's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from envs.actions import to_unit
from envs.controllers import Controller, PIController, RandomController, ZeroController
from envs.export_env import ExportControlEnv, ExportEnvConfig
from envs.oracle import OracleController
from envs.simulator import O_BASE, O_CHANGES, O_CTRL, O_EXPORT_L, O_IMPORT_CTRL, O_METER, O_METER_PV, O_PV, O_REWARD, OUT_SIZE
from envs.state_spec import FEATURE_NAMES

BASELINES = ("pi", "oracle", "zero", "random")


@dataclass
class Trace:
    """One episode: per-second frame, command events, the observations, and the day it covered."""

    controller: str
    seed: int
    frame: pl.DataFrame
    events: np.ndarray  # (n, EV_SIZE) rows from the simulator, see envs/simulator.py
    obs: np.ndarray  # (T + 1, F) state vectors, obs[k] seen before step k
    scenario: str
    day_of_year: int
    start_s: int
    time0: float  # UTC time of obs[0]
    slave_ids: tuple[str, ...]
    meter0: np.ndarray | None = None  # (6,) meter readings at obs[0]: export l1..3, pv l1..3 (W)


def make_controller(name: str, max_power_per_phase_w: float, seed: int = 0) -> Controller:
    """A baseline controller by name: pi, oracle, zero or random."""
    if name == "pi":
        return PIController()
    if name == "oracle":
        return OracleController()
    if name == "zero":
        return ZeroController()
    if name == "random":
        return RandomController(max_power_per_phase_w, seed=seed)
    raise ValueError(f"unknown controller {name!r}; known: {', '.join(BASELINES)}")


def rollout(controller: Controller, config: ExportEnvConfig, seed: int, extra=None) -> Trace:
    """Run ``controller`` for one episode of ``config`` with env seed ``seed``.

    Args:
        controller: Any :class:`~envs.controllers.Controller`. An oracle gets the simulator's foresight
            and a perfect link.
        config: The env configuration (site, scenario, window, reward).
        seed: Env seed: the same seed gives the same day for every controller.
        extra: Optional callable ``(step, obs, targets_w) -> dict`` whose values become extra columns.
    """
    physics_site = None
    if getattr(controller, "needs_perfect_link", False):
        config = replace(config, perfect_link=True)
        physics_site = controller.prepare_site(config.load_site())
    env = ExportControlEnv(config, physics_site=physics_site)
    obs0, info = env.reset(seed=seed)
    if hasattr(controller, "bind"):
        controller.bind(env.sim)
    controller.reset(1)
    n = config.episode_s
    n_s = len(env.site.slaves)
    outs = np.empty((n, OUT_SIZE))
    slaves = np.empty((n, n_s))
    targets = np.empty((n, 3))
    violations = np.zeros(n, dtype=np.int8)
    obs = np.empty((n + 1, len(FEATURE_NAMES)), dtype=np.float32)
    obs[0] = obs0
    extras: dict[str, list] = {}
    for k in range(n):
        tw = controller.act(obs[k][None, :].astype(np.float64))[0]
        o, _, _, _, inf = env.step(to_unit(tw, env.max_power_w))
        obs[k + 1] = o
        outs[k] = env.sim.out[0]
        slaves[k] = env.sim.slave_power[0]
        targets[k] = env._targets[0]
        violations[k] = inf["safety_violation"]
        if extra is not None:
            for key, val in extra(k, obs[k], tw).items():
                extras.setdefault(key, []).append(val)
    cols: dict[str, np.ndarray] = {"t": np.arange(1, n + 1, dtype=np.int64), "time_s": env.sim.time0[0] + np.arange(1, n + 1)}
    for name, base in (("pv_w", O_PV), ("base_w", O_BASE), ("ctrl_w", O_CTRL), ("export_w", O_EXPORT_L), ("meter_export_w", O_METER),
                       ("meter_pv_w", O_METER_PV)):
        for p in range(3):
            cols[f"{name}_l{p + 1}"] = outs[:, base + p]
    for p in range(3):
        cols[f"target_w_l{p + 1}"] = targets[:, p]
    for s, slave in enumerate(env.site.slaves):
        cols[f"slave_w_{slave.id}"] = slaves[:, s]
    cols["command_changes"] = outs[:, O_CHANGES].astype(np.int32)
    cols["controlled_import_w"] = outs[:, O_IMPORT_CTRL]
    cols["safety_violation"] = violations
    cols["reward"] = outs[:, O_REWARD]
    for key, vals in extras.items():
        cols[key] = np.asarray(vals)
    return Trace(
        controller=controller.name, seed=seed, frame=pl.DataFrame(cols),
        events=env.sim.events[0, : env.sim.n_events[0]].copy(), obs=obs,
        scenario=info["scenario"], day_of_year=info["day_of_year"], start_s=info["start_s"],
        time0=float(env.sim.time0[0]), slave_ids=tuple(s.id for s in env.site.slaves),
        meter0=env.sim.meter0[0].copy(),
    )
