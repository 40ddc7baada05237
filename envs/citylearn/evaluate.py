"""Run controllers over CityLearn episodes and write ``kpis.json`` plus a week's dispatch plot.

``kpis.json`` is ``{controller: {kpi: value}}``: baselines under their names (``no_control``, ``rbc`` ...),
a policy under ``policy`` (or the name given). Every controller runs on the same env and the same episode
(reset with the same seed and episode index, so CityLearn's EV SoC noise is the same too). KPI names and
units are documented in :mod:`envs.citylearn.kpis`.

:func:`evaluate_policy` is ``gridrl evaluate`` for this domain: a training run's policy (loaded from its
checkpoint by rllib_configs/policy.py ``load_policy``) against both baselines on days it never trained on:

- a run with ``holdout_weeks`` is evaluated on those weeks (:func:`evaluate_weeks`), one episode each, in
  an env built with the training config itself, so observations and reward are scaled exactly as in
  training; ``kpis.json`` holds the weeks together (:func:`aggregate_kpis`), ``week_NN/kpis.json`` each week;
- otherwise on the days right after its training window (:func:`heldout_window`). CityLearn scales each
  observation by limits it estimates over the env's *simulation window*, so an env built on those days
  scales the same raw values differently from the training env (by up to 0.7 on prices for the 2022
  district's last week): the policy is therefore fed the evaluation env's raw observations scaled by its
  training env (:class:`TrainedPolicy`), and the reward keeps the training env's scales.

Either way ``targets.json`` says whether the policy met the issue's targets against the RBC on those days
(:func:`target_check`): cost and CO2 at least 5 % lower, EV departure success at most 2 points lower, no
battery or charger limit violated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from envs.citylearn.baselines import Controller, make_baseline
from envs.citylearn.env import CityLearnEnvConfig, CityLearnRLlibEnv, resolve_schema
from envs.citylearn.kpis import CO2_FACTOR_KG_PER_KWH, EV_AVOIDED_KG_PER_KWH, district_series, episode_kpis
from envs.config import from_mapping
from envs.tables import format_table

Progress = Callable[[str], None]

BASELINE_NAMES = ("no_control", "rbc")
"""Baselines every policy is compared with."""
DEFAULT_EVAL_DAYS = 7
"""Held-out days when neither the caller nor the run's ``gridrl.eval_days`` says."""
REWARD_SCALES = ("energy_scale_kwh", "ev_energy_scale_kwh", "price_scale", "carbon_scale")
# KPIs of the summary table and whether a higher value is better (the others: lower is better).
SUMMARY_KPIS = {
    "cost_total": False,
    "carbon_emissions_kg": False,
    "grid_import_kwh": False,
    "grid_export_kwh": False,
    "peak_import_kw": False,
    "daily_peak_import_mean_kw": False,
    "ramping_mean_kw": False,
    "ev_departure_success_ratio": True,
    "ev_departure_soc_deficit_mean_ratio": False,
    "solar_self_consumption_ratio": True,
    "co2_emitted_kg": False,
    "co2_indirect_reduction_kg": True,
    "co2_direct_reduction_kg": True,
    "ev_departure_shortfall_kwh": False,
    "limit_violations": False,
    "episode_return": True,
}
# How weeks add up in aggregate_kpis: totals are summed, these are weighted means (by the named KPI),
# these the maximum; every other KPI is a mean weighted by time steps.
SUMMED = (
    "cost_total",
    "carbon_emissions_kg",
    "grid_import_kwh",
    "grid_export_kwh",
    "pv_generation_kwh",
    "pv_used_on_site_kwh",
    "battery_charge_kwh",
    "battery_discharge_kwh",
    "ev_charged_kwh",
    "co2_emitted_kg",
    "co2_indirect_solar_kg",
    "co2_indirect_battery_kg",
    "co2_indirect_reduction_kg",
    "co2_direct_reduction_kg",
    "episode_return",
    "time_steps",
    "ev_departure_count",
    "limit_violations",
    "violations_battery_soc",
    "violations_battery_power",
    "violations_charger_power",
    "violations_charger_no_vehicle",
    "violations_ev_soc",
    "ev_departure_shortfall_kwh",
    "episode_seconds",
    "evaluate_seconds",
)
WEIGHTED_BY = {
    "ev_departure_success_ratio": "ev_departure_count",
    "ev_departure_within_tolerance_ratio": "ev_departure_count",
    "ev_departure_soc_deficit_mean_ratio": "ev_departure_count",
    "solar_self_consumption_ratio": "pv_generation_kwh",
}
MAXIMUM = ("peak_import_kw",)
TARGETS = {"cost_reduction_min": 0.05, "co2_reduction_min": 0.05, "ev_success_drop_max": 0.02}
"""The targets against the RBC: cost and CO2 reductions (shares), EV success drop (ratio points)."""


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
    env_config: CityLearnRLlibEnv | CityLearnEnvConfig | Mapping[str, Any],
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
        env_config: The env, or its config (any CityLearn schema; a short window keeps CityLearn's
            evaluation quick).
        out_dir: Output folder (created).
        controllers: Baseline names (see :data:`envs.citylearn.baselines.BASELINES`).
        policies: Extra controllers by name, e.g. ``{"policy": load_module_policy(ckpt)}`` (from
            rllib_configs/policy.py; it acts on the observations as given: right when the env simulates the
            run's training window; for a training run on other days use :func:`evaluate_policy`).
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
    env = env_config if isinstance(env_config, CityLearnRLlibEnv) else CityLearnRLlibEnv(env_config)
    say(f"loaded {env.config.schema} in {time.perf_counter() - t0:.1f} s: obs {env.observation_space.shape}, "
        f"actions {env.action_space.shape}")  # fmt: skip
    runs: dict[str, Controller] = {name: make_baseline(name, env, seed=seed) for name in controllers}
    runs.update(policies or {})
    results: dict[str, dict[str, float | None]] = {}
    series = {}
    for name, ctrl in runs.items():
        say(f"{name}:")
        t1 = time.perf_counter()
        # CityLearn seeds the vehicles' SoC drift with seed + episode index: the same index for everyone.
        env.citylearn.episode_tracker.reset_episode_index()
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


class TrainedPolicy:
    """A training run's greedy policy on an evaluation env, seeing observations scaled as in training.

    Each step it reads the evaluation env's raw observation and scales it with the training env
    (``reference``; the env itself when it simulates the training window), whatever window the evaluation
    env simulates (see the module docstring). A run trained with ``action_mode: rbc_residual`` acts as
    the RBC plus its correction, so the evaluation env runs in ``direct`` mode like the baselines.
    """

    def __init__(
        self,
        policy: Any,
        reference: CityLearnRLlibEnv,
        env: CityLearnRLlibEnv,
        train: CityLearnEnvConfig | None = None,
    ) -> None:
        """
        Args:
            policy: A :class:`rllib_configs.policy.Policy` (its module takes the env's observations).
            reference: An env built with the run's training env_config (only its scaling is used).
            env: The env the controller acts on (``action_mode: direct``).
            train: The run's env config (default: the reference's); its action_mode decides residual.
        """
        if reference.config.observations == "citylearn":
            raise ValueError(
                "observations: citylearn scales inside CityLearn's wrapper; evaluate policies trained with "
                "observations: normalized (the default) or clipped"
            )
        if env.citylearn.observation_names[0] != reference.citylearn.observation_names[0]:
            raise ValueError("the evaluation env's observations differ from the training env's (schema?)")
        self.policy, self.reference, self.env = policy, reference, env
        self.train = train or reference.config
        self.devices = None
        self.groups = None
        if self.train.action_mode == "rbc_residual":
            from envs.citylearn.devices import DeviceTable

            self.devices = DeviceTable.from_env(env.citylearn)
            if self.train.residual_per == "kind":
                self.groups = self.devices.kind_groups()[1]

    def observe(self) -> np.ndarray:
        """The env's current observation as the policy saw observations in training."""
        raw = np.asarray(self.env.citylearn.observations[0], dtype=np.float32)
        return self.reference._obs(raw)  # the training env's scaling (and clipping) of a raw vector

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = self.policy.act_unit(self.observe())[0]
        if self.devices is None:
            return a
        from envs.citylearn.env import residual_action

        return residual_action(
            self.env.citylearn, self.devices, a, self.train.residual_scale, self.groups
        ).astype(np.float32)


def heldout_window(train: CityLearnEnvConfig, days: int) -> dict[str, int]:
    """The ``days`` days right after the training window (else right before it), as env_config steps.

    Raises:
        ValueError: The schema has fewer than ``days`` days outside the training window.
    """
    if days < 1:
        raise ValueError(f"days: must be >= 1, got {days}")
    schema = json.loads(resolve_schema(train.schema).read_text())
    per_day = int(round(86400 / float(schema.get("seconds_per_time_step") or 3600)))
    first = int(schema.get("simulation_start_time_step") or 0)
    last = int(schema["simulation_end_time_step"])
    start = first if train.start_time_step is None else train.start_time_step
    end = last if train.end_time_step is None else train.end_time_step
    n = days * per_day
    if end + n <= last:
        return {"start_time_step": end + 1, "end_time_step": end + n}
    if start - n >= first:
        return {"start_time_step": start - n, "end_time_step": start - 1}
    raise ValueError(
        f"the run trained on steps [{start}, {end}] of a schema with steps [{first}, {last}]: "
        f"no {days} held-out day(s) ({n} steps) before or after it; train on a shorter window (end_time_step)"
    )


def heldout_envs(train: CityLearnEnvConfig, days: int) -> tuple[CityLearnRLlibEnv, CityLearnRLlibEnv]:
    """The training env (for its scaling) and an env on the ``days`` held-out days after it.

    The held-out env runs one episode over :func:`heldout_window`, with the training reward's scales
    (CityLearn-derived scales would otherwise come from the held-out window).
    """
    reference = CityLearnRLlibEnv(train)
    reward_kwargs = dict(train.reward_kwargs)
    if train.reward == "multi_objective":
        scales = asdict(reference.citylearn.reward_function.config)
        reward_kwargs.update({k: scales[k] for k in REWARD_SCALES})
    window = heldout_window(train, days)
    config = replace(
        train, **window, episode_time_steps=None, random_episode_split=False, reward_kwargs=reward_kwargs
    )
    return reference, CityLearnRLlibEnv(config)


def evaluate_policy(
    policy: Any,
    out: str | Path,
    days: int | None = None,
    seed: int | None = 0,
    progress: Progress | None = None,
) -> dict[str, dict[str, float | None]]:
    """``gridrl evaluate`` of a CityLearn run: its policy, ``no_control`` and ``rbc`` on held-out days.

    The days are those right after the run's training window (:func:`heldout_window`). Writes
    ``out/kpis.json`` (``{controller: {kpi: value}}``, the policy under ``policy``), ``out/dispatch.png``
    (the first week) and ``out/evaluation.json`` (checkpoint, schema, window, seed).

    Args:
        policy: The policy of a ``gridrl train`` run of the citylearn domain (rllib_configs/policy.py
            ``load_policy``: its ``info`` is the run's ``gridrl_run.json``).
        out: Output folder.
        days: Held-out days (None: the run's ``gridrl.eval_days``, else 7).
        seed: Reset seed, the same for every controller.
        progress: Status line callback.

    Returns:
        The KPIs written.

    Raises:
        ValueError: Not a citylearn run, or no held-out days left in the schema.
    """
    say = progress or (lambda _: None)
    checkpoint = policy.checkpoint
    if policy.info.get("domain") != "citylearn":
        raise ValueError(f"{checkpoint}: a {policy.info.get('domain')!r} run, not a citylearn one")
    source = f"{checkpoint}: gridrl_run.json"
    train = from_mapping(CityLearnEnvConfig, policy.info["env_config"], source=source, path="env_config")
    if days is None:
        days = int(
            (policy.info.get("config_yaml") or {}).get("gridrl", {}).get("eval_days", DEFAULT_EVAL_DAYS)
        )
    t0 = time.perf_counter()
    meta: dict[str, Any] = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "algorithm": policy.info.get("algorithm"),
        "schema": str(resolve_schema(train.schema)),
        "seed": seed,
    }
    if train.holdout_weeks:
        env = CityLearnRLlibEnv(replace(train, action_mode="direct", random_episode_split=False))
        weeks = env.heldout_windows()
        say(
            f"env built in {time.perf_counter() - t0:.1f} s; "
            f"held-out weeks {list(train.holdout_weeks)}: {weeks}"
        )
        results = evaluate_weeks(
            env,
            weeks,
            out,
            controllers=BASELINE_NAMES,
            policies={"policy": TrainedPolicy(policy, env, env, train)},
            seed=seed,
            progress=say,
        )
        meta.update(holdout_weeks=list(train.holdout_weeks), windows=[list(w) for w in weeks])
    else:
        reference, env = heldout_envs(train, days)
        window = {"start_time_step": env.config.start_time_step, "end_time_step": env.config.end_time_step}
        say(f"training and held-out envs built in {time.perf_counter() - t0:.1f} s")
        say(f"held-out days: {days} (steps {window['start_time_step']}-{window['end_time_step']})")
        results = evaluate_controllers(
            env, out, controllers=BASELINE_NAMES,
            policies={"policy": TrainedPolicy(policy, reference, env, train)},
            seed=seed, plot_days=min(days, 7), progress=say,
        )  # fmt: skip
        meta.update(days=days, **window)
    (Path(out) / "evaluation.json").write_text(json.dumps(meta, indent=2) + "\n")
    (Path(out) / "targets.json").write_text(json.dumps(target_check(results), indent=2) + "\n")
    return results


def evaluate_weeks(
    env: CityLearnRLlibEnv,
    weeks: Sequence[tuple[int, int]],
    out_dir: str | Path,
    controllers: Sequence[str] = BASELINE_NAMES,
    policies: Mapping[str, Controller] | None = None,
    seed: int | None = 0,
    progress: Progress | None = None,
) -> dict[str, dict[str, float | None]]:
    """Every controller on every window of ``weeks`` (one episode each, in ``env``); per-week KPIs in
    ``out_dir/week_NN/``, the weeks together (:func:`aggregate_kpis`) in ``out_dir/kpis.json``.

    Args:
        env: The env (its config's scaling and reward; the window is set here for each week).
        weeks: Episode windows [start, end].
        out_dir: Output folder.
        controllers: Baseline names.
        policies: Extra controllers by name, bound to ``env``.
        seed: Reset seed, the same for every controller and week.
        progress: Status line callback.
    """
    say = progress or (lambda _: None)
    out = Path(out_dir)
    per_week: list[dict[str, dict[str, float | None]]] = []
    for k, (start, end) in enumerate(weeks):
        env.use_window(start, end)
        say(f"week {k + 1}/{len(weeks)}: steps {start}-{end}")
        per_week.append(
            evaluate_controllers(
                env,
                out / f"week_{k:02d}",
                controllers=controllers,
                policies=policies,
                seed=seed,
                progress=say,
            )  # fmt: skip
        )
    results = {name: aggregate_kpis([w[name] for w in per_week]) for name in per_week[0]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "kpis.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


def aggregate_kpis(weeks: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """One controller's KPIs over several episodes: totals summed, ratios weighted (SUMMED, WEIGHTED_BY)."""

    def vals(k: str) -> list[float]:
        return [float(w[k]) for w in weeks if w.get(k) is not None]

    out: dict[str, float | None] = {}
    steps = [float(w.get("time_steps") or 0.0) for w in weeks]
    for k in weeks[0]:
        v = vals(k)
        if not v:
            out[k] = None
        elif k in SUMMED:
            out[k] = float(sum(v))
        elif k in MAXIMUM:
            out[k] = float(max(v))
        else:
            by = WEIGHTED_BY.get(k)
            pairs = [
                (float(w[k]), float(w.get(by) or 0.0) if by else s)
                for w, s in zip(weeks, steps, strict=True)
                if w.get(k) is not None
            ]
            total = sum(wt for _, wt in pairs)
            out[k] = (
                _clean(sum(x * wt for x, wt in pairs) / total) if total > 0 else _clean(float(np.mean(v)))
            )
    out["episodes"] = float(len(weeks))
    return out


def target_check(results: Mapping[str, Mapping[str, float | None]], policy: str = "policy",
                 against: str = "rbc") -> dict[str, Any]:  # fmt: skip
    """Whether ``policy`` met the issue's targets against ``against`` (:data:`TARGETS`); each row can fail.

    Returns:
        ``{"criteria": {name: {"value", "target", "passed"}}, "passed": all passed}``; an absent
        controller or KPI fails its criterion.
    """
    p, r = results.get(policy) or {}, results.get(against) or {}

    def reduction(k: str) -> float | None:
        a, b = p.get(k), r.get(k)
        return None if a is None or b is None or b == 0 else (b - a) / abs(b)

    drop = None
    if p.get("ev_departure_success_ratio") is not None and r.get("ev_departure_success_ratio") is not None:
        drop = float(r["ev_departure_success_ratio"]) - float(p["ev_departure_success_ratio"])
    rows = {
        "cost_reduction_vs_rbc": (reduction("cost_total"), f">= {TARGETS['cost_reduction_min']}",
                                  lambda v: v >= TARGETS["cost_reduction_min"]),
        "co2_reduction_vs_rbc": (reduction("carbon_emissions_kg"), f">= {TARGETS['co2_reduction_min']}",
                                 lambda v: v >= TARGETS["co2_reduction_min"]),
        "ev_success_drop_vs_rbc": (drop, f"<= {TARGETS['ev_success_drop_max']}",
                                   lambda v: v <= TARGETS["ev_success_drop_max"] + 1e-12),
        "limit_violations": (p.get("limit_violations"), "== 0", lambda v: v == 0),
    }  # fmt: skip
    criteria = {
        name: {"value": v, "target": target, "passed": bool(v is not None and ok(v))}
        for name, (v, target, ok) in rows.items()
    }
    return {"policy": policy, "against": against, "criteria": criteria,
            "passed": all(c["passed"] for c in criteria.values())}  # fmt: skip


def kpi_table(results: Mapping[str, Mapping[str, float | None]], against: str | None = "rbc") -> str:
    """The summary KPIs side by side, with which controllers beat ``against`` on each.

    Args:
        results: ``{controller: {kpi: value}}`` as :func:`evaluate_controllers` returns.
        against: The controller the last column compares with (no such column if absent, or None).
    """
    names = list(results)
    rivals = [n for n in names if n != against] if against in results else []
    rows = []
    for k, higher in SUMMARY_KPIS.items():
        row = [k, *(results[n].get(k) for n in names)]
        if rivals:
            ref = results[against].get(k)
            row.append(", ".join(n for n in rivals if beats(results[n].get(k), ref, higher)) or "-")
        rows.append(row)
    columns = ["kpi", *names] + ([f"better than {against}"] if rivals else [])
    return format_table(rows, columns, align="<" + ">" * len(names) + "<" * bool(rivals))


def beats(
    value: float | None, reference: float | None, higher_is_better: bool, rel_tol: float = 1e-6
) -> bool:
    """Whether ``value`` is strictly better than ``reference`` (beyond a relative tolerance)."""
    if value is None or reference is None:
        return False
    margin = rel_tol * max(abs(reference), 1e-12)
    return value > reference + margin if higher_is_better else value < reference - margin
