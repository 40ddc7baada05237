"""Model-based policy evaluation: a policy's export estimated with the forward model, without a simulator.

``gridrl evaluate --checkpoint POLICY --model MODEL --dataset D`` loads the policy (rllib_configs/policy.py)
and calls :func:`evaluate_with_model`. The
policy, the PI and the other baselines each run from the same logged start states of the **test** split
(daylight windows drawn with the seed), through the model in log-replay mode (envs/dynamics/rollout.py:
PV, availability, missing readings and setpoint follow the logged day; export and acknowledged power come
from the model; the ensemble mean steps the state). Each rollout becomes a trace (:func:`trace_from_states`)
and envs/metrics.py computes the metrics of record from it: the same function the simulator's traces go
through. The PI's logged behaviour on the same windows is scored the same way (``logged_pi``).

Reported: the metrics of record per controller, export and peak reduction against the model's PI and
against the logged PI, the share of seconds where the ensemble agreed (``trusted_share``: disagreement under
the model env's threshold) and the estimate's **trust** (:func:`trust_parts`), the lowest of:

* the ensemble's agreement on that controller's rollouts (``trusted_share``);
* how far the model meets the seed's criteria on held-out data (envs/dynamics/evaluate.py
  ``criteria_trust``: 1 only if every criterion passed; k-step MSE 0.27 against < 0.1 gives 0.37);
* how well the model reproduces the logged PI on the same windows (``pi_calibration``): the PI run through
  the model against what the PI did in the log, on export and on controlled import,
  ``1 - |model - logged| / logged`` (a logged energy under 50 W on average counts as 50 W).

Agreement alone is not trust: ensemble members trained from the same data agree on the same mistakes (a
model trained one iteration agrees 99.8 % of the time while its PI exports a quarter of the logged PI's).
:func:`judge_with_model` is the promotion rule's judge for a site without a simulator (envs/promotion.py).

:func:`rank_check` validates the ranking against the simulator's own results (Spearman's rho).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from envs.actions import to_unit
from envs.controllers import (
    Controller,
    PIController,
    PolicyController,
    RandomController,
    RuleBasedController,
    UnitPolicy,
    ZeroController,
)
from envs.dynamics.data import SplitData, load_split, site_path
from envs.dynamics.evaluate import criteria_trust
from envs.dynamics.model import ForwardModel
from envs.dynamics.model_env import (
    ACKED_L,
    AVAIL_L,
    EXPORT_L,
    TARGET_L,
    estimate_command_changes,
    resolve_model_checkpoint,
)
from envs.dynamics.rollout import HISTORY_S, LoggedContext, ModelStepper
from envs.metrics import metrics_of_record, reduction_pct
from envs.promotion import PromotionConfig, Verdict, decide
from envs.site import load_site
from envs.state_spec import FEAT
from envs.tables import format_table

BASELINES = ("pi", "zero", "rbc", "random")
DEFAULT_THRESHOLD = 0.15  # as ModelEnvConfig.disagreement_threshold
CALIBRATION_FLOOR_W = 50.0  # pi_calibration: a logged energy under this average power counts as this


def make_baseline(name: str, max_power_per_phase_w: float, seed: int = 0) -> Controller:
    """A baseline controller by name: pi, zero, rbc or random."""
    factories = {
        "pi": PIController,
        "zero": ZeroController,
        "rbc": RuleBasedController,
        "random": lambda: RandomController(max_power_per_phase_w, seed=seed),
    }
    if name not in factories:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(factories)}")
    return factories[name]()


def trace_from_states(
    states: np.ndarray, prev_state: np.ndarray, deadband_w: float, violations: np.ndarray | None = None
) -> pl.DataFrame:
    """A trace frame (envs/metrics.py columns) of rollouts: states (B, T, 30) after each step and before it.

    ``export_w_l*`` are the (predicted or logged) meter readings, ``ctrl_w_l*`` the acknowledged commands,
    ``command_changes`` estimated from the targets (model_env.estimate_command_changes). Windows follow
    each other in the frame (column ``window``), as days do in a simulator trace.
    """
    b, t, _ = states.shape
    before = np.concatenate([prev_state[:, None], states[:, :-1]], axis=1)
    changes = estimate_command_changes(
        before[..., TARGET_L], states[..., TARGET_L], states[..., AVAIL_L], deadband_w
    )
    cols: dict[str, Any] = {"window": np.repeat(np.arange(b), t), "t": np.tile(np.arange(1, t + 1), b)}
    for p in range(3):
        cols[f"export_w_l{p + 1}"] = states[..., EXPORT_L[p]].ravel()
        cols[f"ctrl_w_l{p + 1}"] = states[..., ACKED_L[p]].ravel()
        cols[f"target_w_l{p + 1}"] = states[..., TARGET_L[p]].ravel()
    cols["command_changes"] = changes.ravel().astype(np.int32)
    cols["safety_violation"] = (
        np.zeros((b, t), np.int8) if violations is None else violations.astype(np.int8)
    ).ravel()
    return pl.DataFrame(cols)


def model_rollout(
    model: ForwardModel,
    controller: Controller,
    context: LoggedContext,
    horizon: int,
    max_power_per_phase_w: float,
    availability: str = "energy",
    balance: str = "replay",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``controller`` through the model from the context's starts (``availability``, ``balance``:
    envs/dynamics/rollout.py ModelStepper's).

    Returns:
        (states (B, T, 30), disagreement (B, T), safety violations (B, T)).
    """
    stepper = ModelStepper(model, max_power_per_phase_w, "mean", True, availability, balance)
    obs = stepper.reset(context)
    controller.reset(len(obs))
    if isinstance(controller, PIController):  # warm start: the integrator is the total of the last targets
        controller.u = obs[:, [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]].sum(-1)
    b = len(obs)
    states, dis, viol = (
        np.empty((b, horizon, obs.shape[1])),
        np.empty((b, horizon)),
        np.zeros((b, horizon), bool),
    )
    for t in range(horizon):
        a = to_unit(controller.act(obs), max_power_per_phase_w)
        viol[:, t] = ~np.isfinite(a).all(-1)
        obs, dis[:, t] = stepper.step(a)
        states[:, t] = obs
    return states, dis, viol


def daylight_starts(split: SplitData, n: int, horizon: int, seed: int, min_pv_w: float = 500.0) -> np.ndarray:
    """``n`` start rows with PV >= ``min_pv_w``, history and ``horizon`` s of log after; seeded."""
    starts = split.rollout_starts(horizon, HISTORY_S)
    starts = starts[split.obs[starts, FEAT["pv_w"]] >= min_pv_w]
    if len(starts) == 0:
        raise ValueError(f"no daylight start with {horizon} s of log after it")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(starts, min(n, len(starts)), replace=False))


def estimate_controllers(
    model: ForwardModel,
    split: SplitData,
    controllers: dict[str, Controller],
    starts: np.ndarray,
    horizon: int,
    max_power_per_phase_w: float,
    deadband_w: float,
    threshold: float = DEFAULT_THRESHOLD,
    progress: bool = True,
    model_trust: tuple[float, str] | None = None,
    availability: str = "energy",
    balance: str = "replay",
) -> tuple[dict[str, dict[str, float]], dict[str, pl.DataFrame]]:
    """Metrics of record of each controller through the model, and of the logged PI, on the same windows.

    ``availability``: 'energy' (a phase's availability ends once a controller has commanded it the logged
    segment's energy) or 'replay' (as logged); ``balance``: 'replay' (export = the logged export plus the
    logged minus the predicted acknowledged power) or 'model' (the model's export); envs/dynamics/rollout.py.

    With ``model_trust`` (envs/dynamics/evaluate.py ``criteria_trust`` of the model), each controller's
    metrics carry ``trust`` and ``trust_parts`` (:func:`trust_parts`); without it, only ``trusted_share``.
    """
    context = LoggedContext.from_split(split, starts, horizon)
    results: dict[str, dict[str, float]] = {}
    traces: dict[str, pl.DataFrame] = {}
    logged = context.states[:, 1:]
    traces["logged_pi"] = trace_from_states(logged, context.states[:, 0], deadband_w)
    results["logged_pi"] = {**metrics_of_record(traces["logged_pi"]), "trusted_share": 1.0}
    for name, ctrl in controllers.items():
        t0 = time.perf_counter()
        states, dis, viol = model_rollout(
            model, ctrl, context, horizon, max_power_per_phase_w, availability, balance
        )
        traces[name] = trace_from_states(states, context.states[:, 0], deadband_w, viol)
        results[name] = {
            **metrics_of_record(traces[name]),
            "trusted_share": float((dis <= threshold).mean()),
            "disagreement_p90": float(np.percentile(dis, 90)),
        }
        if progress:
            print(f"[evaluate-model] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    for m in results.values():
        for ref in ("pi", "logged_pi"):
            if ref in results:
                m[f"export_reduction_vs_{ref}_pct"] = reduction_pct(
                    m["export_kwh"], results[ref]["export_kwh"]
                )
                m[f"peak_reduction_vs_{ref}_pct"] = reduction_pct(
                    m["peak_export_w"], results[ref]["peak_export_w"]
                )
    if model_trust is not None:
        hours = len(starts) * horizon / 3600.0
        calibration = pi_calibration(results["pi"], results["logged_pi"], hours) if "pi" in results else None
        results["logged_pi"]["trust"] = 1.0  # the log itself
        for name in controllers:
            parts = trust_parts(results[name]["trusted_share"], model_trust, calibration)
            results[name]["trust"], results[name]["trust_parts"] = parts["trust"], parts
    return results, traces


def pi_calibration(model_pi: dict[str, float], logged_pi: dict[str, float], hours: float) -> dict[str, float]:
    """How well the model reproduces the logged PI on the same windows: per quantity the rule judges
    (export, controlled import), ``max(0, 1 - |model - logged| / max(logged, floor))``, the floor being
    ``CALIBRATION_FLOOR_W`` on average over ``hours``. 1 = the model's PI does what the logged PI did."""
    floor_kwh = CALIBRATION_FLOOR_W * hours / 1000.0
    out = {}
    for key in ("export_kwh", "controlled_import_kwh"):
        err = abs(model_pi[key] - logged_pi[key]) / max(logged_pi[key], floor_kwh, 1e-9)
        out[key] = float(max(0.0, 1.0 - err)) if np.isfinite(err) else 0.0
    return out


def trust_parts(
    agreement: float, model_trust: tuple[float, str], calibration: dict[str, float] | None
) -> dict[str, Any]:
    """The trust of a model-based estimate (the module docstring): the lowest of its parts, and why."""
    criteria, criteria_why = model_trust
    parts = {"ensemble_agreement": float(agreement), "model_criteria": float(criteria)}
    if calibration is None:
        parts["pi_calibration"] = 0.0  # no PI through the model: nothing shows the model reproduces the log
    else:
        parts["pi_calibration"] = min(calibration.values())
    trust = min(parts.values())
    low = min(parts, key=parts.get)
    why = {
        "ensemble_agreement": f"the ensemble agrees on {agreement:.0%} of the seconds",
        "model_criteria": f"the model {criteria_why}",
        "pi_calibration": (
            "the PI was not run through the model" if calibration is None else
            f"the model's PI reproduces the logged PI's export to {calibration['export_kwh']:.2f} and its "
            f"controlled import to {calibration['controlled_import_kwh']:.2f}"
        ),
    }[low]  # fmt: skip
    return {**parts, "trust": float(trust), "why": why}


def site_limits_of(dataset: str | Path) -> tuple[float, float]:
    """The dataset's site: (max power per phase W, PI deadband W)."""
    site = load_site(site_path(dataset))
    return site.control.max_power_per_phase_w, site.control.deadband_w


def evaluate_with_model(
    policy: UnitPolicy | None,
    model_checkpoint: str,
    dataset: str,
    out: str | Path,
    seed: int = 0,
    windows: int = 32,
    horizon_s: int = 600,
    baselines: tuple[str, ...] = ("pi", "zero", "rbc"),
    threshold: float = DEFAULT_THRESHOLD,
    model_criteria: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Estimate a policy's metrics of record with the forward model on the test split (DIR/model_based.json).

    Args:
        policy: A loaded policy (rllib_configs/policy.py ``load_policy``); None = baselines only.
        model_checkpoint: A forward-model checkpoint directory.
        dataset: The dataset folder (its test split gives the start states and the replayed log).
        out: Output directory.
        seed: Selects the start states.
        windows, horizon_s: Number and length of the windows.
        baselines: Baselines to run through the model beside the policy.
        threshold: Disagreement above which a second counts as untrusted.
        model_criteria: The model's criteria rows (envs/dynamics/evaluate.py ``evaluate_model``), e.g. from
            its training run's report; None = scored here on the test split (:func:`score_model`).

    Returns:
        {controller: metrics, with ``trust``}; the policy under 'policy', the logged PI under 'logged_pi'.
    """
    max_w, deadband = site_limits_of(dataset)
    model = ForwardModel.load(resolve_model_checkpoint(model_checkpoint))
    split = load_split(dataset, "test")
    starts = daylight_starts(split, windows, horizon_s, seed)
    if model_criteria is None:
        model_criteria = score_model(model, split, max_w, seed)
    controllers: dict[str, Controller] = {}
    if policy is not None:
        controllers["policy"] = PolicyController(policy, max_w)
    controllers.update({b: make_baseline(b, max_w, seed) for b in baselines})
    results, _ = estimate_controllers(
        model, split, controllers, starts, horizon_s, max_w, deadband, threshold,
        model_trust=criteria_trust(model_criteria),
    )  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": str(model_checkpoint),
        "dataset": str(dataset),
        "split": "test",
        "windows": int(len(starts)),
        "horizon_s": horizon_s,
        "seed": seed,
        "threshold": threshold,
        "model_criteria": model_criteria,
        "results": results,
    }
    (out / "model_based.json").write_text(json.dumps(summary, indent=2))
    return results


def score_model(
    model: ForwardModel, split: SplitData, max_power_per_phase_w: float, seed: int = 0
) -> list[dict[str, Any]]:
    """The seed's criteria of ``model`` on ``split`` (a sample: 2,000 k-step windows, 100 rollouts)."""
    from envs.dynamics.evaluate import evaluate_model

    rng = np.random.default_rng(seed)
    report = evaluate_model(model, split, max_power_per_phase_w, windows=2_000, rollouts=100, rng=rng)
    return report["criteria"]


def judge_with_model(
    candidate: Controller,
    model_checkpoint: str | Path,
    dataset: str | Path,
    config: PromotionConfig | None = None,
    seed: int = 0,
    model_criteria: list[dict[str, Any]] | None = None,
    split: str = "val",
    threshold: float = DEFAULT_THRESHOLD,
    name: str = "the candidate",
) -> Verdict:
    """The promotion rule judged with the forward model, for a site without a simulator (envs/promotion.py).

    The candidate and the PI run through the model from the same logged daylight windows of ``split`` (the
    validation split: the policy trained on the train split, the report uses the test split). The verdict
    carries the estimate's trust (the lower of the candidate's and the PI's, see the module docstring):
    below ``config.min_trust`` nothing is promoted, whatever the estimate says.

    Args:
        candidate: The controller to judge (a policy through envs.controllers.PolicyController).
        model_checkpoint: A forward-model checkpoint (or its run directory).
        dataset: The dataset (its ``split`` gives the windows and the replayed log).
        config: The rule (its ``model_windows`` and ``model_horizon_s`` size the windows).
        seed: Selects the windows.
        model_criteria: The model's criteria rows; None = scored here on ``split`` (:func:`score_model`).
        split: The dataset split judged on.
        threshold: Ensemble disagreement above which a second is not agreed on.
        name: What the candidate is called in the verdict's reason.
    """
    config = config or PromotionConfig()
    t0 = time.perf_counter()
    max_w, deadband = site_limits_of(dataset)
    model = ForwardModel.load(resolve_model_checkpoint(str(model_checkpoint)))
    data = load_split(dataset, split)
    if model_criteria is None:
        model_criteria = score_model(model, data, max_w, seed)
    starts = daylight_starts(data, config.model_windows, config.model_horizon_s, seed)
    results, _ = estimate_controllers(
        model, data, {"candidate": candidate, "pi": PIController()}, starts, config.model_horizon_s, max_w,
        deadband, threshold, progress=False, model_trust=criteria_trust(model_criteria),
    )  # fmt: skip
    cand, pi = results["candidate"], results["pi"]
    detail = cand["trust_parts"] if cand["trust"] <= pi["trust"] else pi["trust_parts"]
    where = f"{len(starts)} logged daylight windows of {config.model_horizon_s} s of the {split} split"
    cases = [{"controller": n, **{k: results[n][k] for k in ("export_kwh", "controlled_import_kwh", "trust")}}
             for n in ("candidate", "pi", "logged_pi")]  # fmt: skip
    trust = min(cand["trust"], pi["trust"])
    verdict = decide(cand, pi, config, "forward model", trust, detail, cases, where, name)
    verdict.seconds = round(time.perf_counter() - t0, 1)
    return verdict


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def simulate_controllers(
    controllers: dict[str, Controller],
    days: int,
    hours: float,
    start_h: float,
    seed: int,
    site: str | None = None,
) -> dict[str, dict[str, float]]:
    """The simulator's metrics of record for each controller on the same held-out days (envs/rollout.py)."""
    from envs.export_env import ExportEnvConfig
    from envs.rollout import rollout

    cfg = ExportEnvConfig(
        site=site, scenario="random", episode_s=int(hours * 3600), start_s=int(start_h * 3600)
    )
    out = {}
    for name, ctrl in controllers.items():
        t0 = time.perf_counter()
        frames = [rollout(ctrl, cfg, seed=2_000_000_011 + seed * 1000 + d).frame for d in range(days)]
        out[name] = metrics_of_record(pl.concat(frames))
        print(f"[rank-check] simulator {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def simulate_logged_windows(
    controllers: dict[str, Controller],
    split: SplitData,
    starts: np.ndarray,
    horizon: int,
    gen_seed: int,
    site: str | None = None,
) -> dict[str, dict[str, float]]:
    """The simulator's metrics of record for each controller on the logged windows themselves.

    The dataset's days are simulated days (``gridrl data generate``): with the generator's seed, each day of
    the windows is simulated again, whole, as offline_data/generate.py simulated it (same weather, loads,
    link draws), under each controller; the metrics are taken over the same seconds as the model-based
    windows. Under the PI this reproduces the logged day.
    """
    from envs.export_env import ExportEnvConfig
    from envs.profiles import DAY_S
    from envs.rollout import rollout
    from envs.simulator import EPOCH_2025

    tz = load_site(site).timezone_offset_h
    t0s = split.time_s[starts]
    doys = ((t0s + tz * 3600 - EPOCH_2025) // DAY_S + 1).astype(int)
    out = {}
    for name, ctrl in controllers.items():
        t0 = time.perf_counter()
        frames = []
        for doy in sorted(set(doys.tolist())):
            seq = np.random.SeedSequence([gen_seed, doy])
            cfg = ExportEnvConfig(site=site, scenario="random", episode_s=DAY_S, start_s=0, day_of_year=doy)
            day = rollout(ctrl, cfg, seed=int(seq.generate_state(1)[0])).frame
            for start in t0s[doys == doy]:
                frames.append(day.filter((pl.col("time_s") > start) & (pl.col("time_s") <= start + horizon)))
        out[name] = metrics_of_record(pl.concat(frames))
        print(f"[rank-check] simulator {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def rank_check(
    model_checkpoint: str,
    dataset: str,
    policies: dict[str, str | UnitPolicy],
    out: str | Path,
    seed: int = 0,
    windows: int = 32,
    horizon_s: int = 600,
    sim_days: int = 3,
    sim_hours: float = 8.0,
    sim_start_h: float = 8.0,
    metric: str = "export_kwh",
    gen_seed: int | None = None,
    availability: str = "energy",
    balance: str = "replay",
) -> dict[str, Any]:
    """Model-based estimates vs the simulator's results for the same controllers: Spearman's rho.

    ``policies``: name -> a baseline's name (pi, zero, rbc, random) or a loaded policy
    (rllib_configs/policy.py ``load_policy``). With
    ``gen_seed`` (the seed the dataset's logs were generated with) the simulator replays the test split's own
    days and scores the same windows (:func:`simulate_logged_windows`); without it, ``sim_days`` held-out
    days of ``sim_hours`` from ``sim_start_h``. ``availability``, ``balance``: how the model rollouts treat
    available power and the uncontrolled balance (:func:`estimate_controllers`). Writes DIR/rank_check.json.
    """
    max_w, deadband = site_limits_of(dataset)
    controllers: dict[str, Controller] = {}
    for name, p in policies.items():
        baseline = isinstance(p, str)
        controllers[name] = make_baseline(p, max_w, seed) if baseline else PolicyController(p, max_w)
    model = ForwardModel.load(resolve_model_checkpoint(model_checkpoint))
    split = load_split(dataset, "test")
    starts = daylight_starts(split, windows, horizon_s, seed)
    est, _ = estimate_controllers(
        model, split, controllers, starts, horizon_s, max_w, deadband,
        availability=availability, balance=balance,
    )  # fmt: skip
    if gen_seed is None:
        sim = simulate_controllers(controllers, sim_days, sim_hours, sim_start_h, seed, site_path(dataset))
    else:
        sim = simulate_logged_windows(controllers, split, starts, horizon_s, gen_seed, site_path(dataset))
    names = list(controllers)
    rho = spearman([est[n][metric] for n in names], [sim[n][metric] for n in names])
    report = {
        "metric": metric,
        "spearman_rho": rho,
        "controllers": names,
        "model": {n: est[n] for n in names},
        "simulator": sim,
        "windows": int(len(starts)),
        "horizon_s": horizon_s,
        "sim": "logged windows" if gen_seed is not None else "held-out days",
        "availability": availability,
        "balance": balance,
        "gen_seed": gen_seed,
        "sim_days": sim_days,
        "sim_hours": sim_hours,
        "sim_start_h": sim_start_h,
        "seed": seed,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank_check.json").write_text(json.dumps(report, indent=2))
    return report


def format_results(results: dict[str, dict[str, float]]) -> str:
    """A table of model-based estimates: metrics of record, reduction against the logged PI, the ensemble's
    agreement (``trusted_share``) and the estimate's trust (NaN where it was not computed)."""
    cols = (
        "export_kwh",
        "peak_export_w",
        "oscillations_per_min",
        "phase_imbalance_w",
        "controlled_import_kwh",
    )
    nan = float("nan")
    rows = [
        [name, *(m[c] for c in cols), m.get("export_reduction_vs_logged_pi_pct", nan), m["trusted_share"],
         m.get("trust", nan)]
        for name, m in results.items()
    ]  # fmt: skip
    columns = ["controller", *cols, "vs logged PI %", "agree", "trust"]
    return format_table(rows, columns, fmt=[None, *[".3f"] * len(cols), ".1f", ".2f", ".2f"])
