"""Run controllers over one CityLearn episode each and write ``kpis.json`` plus a week's dispatch plot.

``kpis.json`` is ``{controller: {kpi: value}}``: baselines under their names (``no_control``, ``rbc`` ...),
a policy under ``policy`` (or the name given). Every controller runs on the same env and the same episode
(reset with the same seed). KPI names and units are documented in :mod:`envs.citylearn.kpis`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.citylearn.baselines import Controller, make_baseline
from envs.citylearn.env import CityLearnEnvConfig, CityLearnRLlibEnv
from envs.citylearn.kpis import CO2_FACTOR_KG_PER_KWH, EV_AVOIDED_KG_PER_KWH, district_series, episode_kpis

Progress = Callable[[str], None]


def run_episode(
    env: CityLearnRLlibEnv, controller: Controller, seed: int | None = None, progress: Progress | None = None
) -> tuple[float, int]:
    """Run ``controller`` from reset to the end of the episode.

    Args:
        env: The env (reset here).
        controller: Callable obs -> action; its ``reset()`` is called first if it has one.
        seed: Passed to ``env.reset``.
        progress: Called with a status line about every 10 % of the episode.

    Returns:
        The episode return and the number of steps.
    """
    obs, _ = env.reset(seed=seed)
    if hasattr(controller, "reset"):
        controller.reset()
    total = env.citylearn.episode_tracker.episode_time_steps - 1
    every = max(total // 10, 1)
    ret, steps, t0 = 0.0, 0, time.perf_counter()
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(controller(obs))
        ret += reward
        steps += 1
        done = terminated or truncated
        if progress and (steps % every == 0 or done):
            rate = steps / max(time.perf_counter() - t0, 1e-9)
            progress(f"  step {steps}/{total} ({rate:.0f} steps/s)")
    return ret, steps


def load_rllib_policy(checkpoint: str | Path) -> Controller:
    """A greedy controller from an RLlib (new API stack) checkpoint: an Algorithm checkpoint folder or the
    RLModule folder inside it (``learner_group/learner/rl_module/default_policy``)."""
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = Path(checkpoint)
    inner = path / "learner_group" / "learner" / "rl_module" / "default_policy"
    module = RLModule.from_checkpoint(str(inner if inner.is_dir() else path))
    dist_cls = module.get_inference_action_dist_cls()

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.from_numpy(np.asarray(obs, np.float32)[None])})
        dist = dist_cls.from_logits(out["action_dist_inputs"]).to_deterministic()
        return np.clip(dist.sample()[0].numpy(), -1.0, 1.0)

    return act


def _clean(v: float) -> float | None:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def plot_dispatch(
    series: Mapping[str, Mapping[str, np.ndarray]], step_h: float, path: Path, days: int = 7
) -> None:
    """One panel per controller: load, EV charging, PV, battery and grid over the first ``days`` days."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 2.8 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        s = series[name]
        n = min(len(s["net"]), int(round(days * 24 / step_h)))
        t = np.arange(n) * step_h
        kw = {k: np.asarray(v[:n]) / step_h for k, v in s.items()}
        ax.plot(t, kw["load"], label="load", color="0.3")
        ax.plot(t, kw["ev"], label="EV charging", color="tab:purple")
        ax.plot(t, kw["pv"], label="PV", color="tab:orange")
        ax.plot(t, kw["battery"], label="battery (+charge)", color="tab:green")
        ax.plot(t, kw["net"], label="grid (+import)", color="tab:blue", lw=1.8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("kW")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", ncol=5, fontsize=8)
    axes[-1, 0].set_xlabel("hours from episode start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_controllers(
    env_config: CityLearnEnvConfig | Mapping[str, Any],
    out_dir: str | Path,
    controllers: Sequence[str] = ("no_control", "rbc"),
    policies: Mapping[str, Controller] | None = None,
    seed: int | None = None,
    co2_factor: float = CO2_FACTOR_KG_PER_KWH,
    ev_factor: float = EV_AVOIDED_KG_PER_KWH,
    plot_days: int = 7,
    progress: Progress | None = None,
) -> dict[str, dict[str, float | None]]:
    """Run baselines and policies on the same episode; write ``out_dir/kpis.json`` and ``dispatch.png``.

    Args:
        env_config: The env (any CityLearn schema; a short window keeps CityLearn's evaluation quick).
        out_dir: Output folder (created).
        controllers: Baseline names (see :data:`envs.citylearn.baselines.BASELINES`).
        policies: Extra controllers by name, e.g. ``{"policy": load_rllib_policy(ckpt)}``.
        seed: Reset seed, the same for every controller.
        co2_factor: Grid CO2 factor of the seed's accounting.
        ev_factor: CO2 avoided per EV kWh.
        plot_days: Days shown in the dispatch plot.
        progress: Status line callback.

    Returns:
        The KPIs written, ``{controller: {kpi: value}}`` (non-finite values as None).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _: None)
    t0 = time.perf_counter()
    env = CityLearnRLlibEnv(env_config)
    say(f"loaded {env.config.schema} in {time.perf_counter() - t0:.1f} s: obs {env.observation_space.shape}, "
        f"actions {env.action_space.shape}")  # fmt: skip
    runs: dict[str, Controller] = {name: make_baseline(name, env) for name in controllers}
    runs.update(policies or {})
    results: dict[str, dict[str, float | None]] = {}
    series = {}
    for name, ctrl in runs.items():
        say(f"{name}:")
        t1 = time.perf_counter()
        ret, steps = run_episode(env, ctrl, seed=seed, progress=say)
        t2 = time.perf_counter()
        kpis = episode_kpis(env.citylearn, co2_factor=co2_factor, ev_factor=ev_factor)
        kpis["episode_return"] = ret
        kpis["episode_seconds"] = t2 - t1
        kpis["evaluate_seconds"] = time.perf_counter() - t2
        results[name] = {k: _clean(float(v)) for k, v in kpis.items()}
        series[name] = district_series(env.citylearn)
        say(f"  return {ret:.3f} over {steps} steps, KPIs in {kpis['evaluate_seconds']:.1f} s")
    (out / "kpis.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    step_h = float(env.citylearn.seconds_per_time_step) / 3600.0
    plot_dispatch(series, step_h, out / "dispatch.png", days=plot_days)
    return results
