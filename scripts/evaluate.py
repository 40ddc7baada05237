"""``gridrl evaluate``: a trained policy against the baselines on the same held-out days."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from envs.metrics import reduction_pct
from envs.outputs import OutputKind, check_output, staged_output
from envs.tables import criteria_table
from scripts.flags import SEED, add_day_window, add_output, add_scenario, check_window, int_at_least

# What `gridrl evaluate` writes: the export domain's plot, the model-based JSON or CityLearn's KPIs.
EVALUATE_OUTPUT = OutputKind(
    "the results of gridrl evaluate",
    ("cumulative_export.png", "model_based.json", "kpis.json"),
    any_entry=True,
)

# Held-out days: training envs are seeded by RLlib from the run's seed (small integers); evaluation days
# come from a separate seed range, so a policy is never judged on a day it trained on.
EVAL_SEED_OFFSET = 1_000_000_007


def held_out_day_seed(seed: int, day: int) -> int:
    """The env seed of held-out day ``day`` of ``--seed`` (gridrl evaluate and benchmark, the edge replay)."""
    return EVAL_SEED_OFFSET + seed * 10_000 + day


# The seed's success criteria: (name, metric, test, threshold, unit)
CRITERIA = (
    ("export reduction vs PI", "export_reduction_pct", ">=", 10.0, "%"),
    ("peak reduction vs PI", "peak_reduction_pct", ">=", 5.0, "%"),
    ("command changes per minute", "oscillations_per_min", "<", 10.0, "/min"),
    ("phase imbalance", "phase_imbalance_w", "<", 500.0, "W"),
    ("safety violations", "safety_violations", "==", 0, ""),
    # gridrl's addition (DESIGN.md): pulling from the grid is not a way to cut export.
    ("controlled import vs PI", "controlled_import_ratio", "<=", 1.1, "x PI"),
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained policy against the PI, oracle and no control on held-out days",
        description=(
            "Run the checkpoint's greedy policy and the baselines on the same held-out simulated days; "
            "write DIR/metrics.json ({controller: {metric: value}}, the policy under 'policy'), "
            "DIR/criteria.json (the success criteria), a day's plot and the cumulative export plot."
        ),
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint dir (a trial's checkpoint_NNNNNN or a promoted best/)"
    )
    p.add_argument("--site", default=None, help="site YAML (default: the site the policy was trained on)")
    p.add_argument("--days", type=int_at_least(1), default=2, help="held-out days (default 2)")
    add_day_window(p)
    add_scenario(p, "the held-out days")
    p.add_argument(
        "--baselines", default="pi,oracle,zero", help="comma-separated baselines (default pi,oracle,zero)"
    )
    p.add_argument("--seed", type=SEED, default=0, help="selects the held-out days")
    add_output(p, "evaluate")
    mb = p.add_argument_group(
        "model-based evaluation (no simulator)",
        "With --model and --dataset, the policy and the baselines run through the learned forward model from "
        "the test split's logged states (envs/dynamics/evaluator.py); the PI's logged behaviour on the same "
        "windows is scored too. Writes DIR/model_based.json.",
    )
    mb.add_argument("--model", default=None, help="forward-model checkpoint or its training run dir")
    mb.add_argument(
        "--dataset", default=None, help="dataset folder from `gridrl data build` (its test split)"
    )
    mb.add_argument(
        "--windows", type=int_at_least(1), default=32, help="test-split daylight windows (default 32)"
    )
    mb.add_argument("--horizon-s", type=int_at_least(1), default=600, help="seconds per window (default 600)")
    return p


def success_criteria(results: dict[str, dict[str, float]], who: str = "policy") -> list[dict[str, Any]]:
    """The seed's success criteria for ``who`` against the PI, as rows (name, value, target, passed)."""
    m, pi = results[who], results["pi"]
    values = {
        **m,
        "export_reduction_pct": reduction_pct(m["export_kwh"], pi["export_kwh"]),
        "peak_reduction_pct": reduction_pct(m["peak_export_w"], pi["peak_export_w"]),
        "controlled_import_ratio": (m["controlled_import_kwh"] + 0.01) / (pi["controlled_import_kwh"] + 0.01),
    }
    rows = []
    for name, key, op, threshold, unit in CRITERIA:
        v = values[key]
        ok = {">=": v >= threshold, "<": v < threshold, "<=": v <= threshold, "==": v == threshold}[op]
        ok = ok and not math.isnan(v)
        rows.append({"criterion": name, "value": v, "target": f"{op} {threshold}{unit}", "passed": bool(ok)})
    return rows


def onnx_actor(policy: Any, out: Path, seed: int, n_parity: int = 200) -> Any:
    """A checkpoint's greedy policy as the edge runtime and Serve run it: its graph
    (rllib_configs/policy.py ``Policy.net``, told its site) written to ``out/policy.onnx`` by serve/bundle.py
    ``export_onnx``, which refuses it unless ONNX Runtime and torch agree on ``parity_states``, then run by
    ONNX Runtime on one core (``OnnxPolicy.act_unit``). What the policy is judged on is the exported graph,
    and a day of a supervisor takes about 22 s instead of torch's 110 on one core (torch's per-call
    overhead, one state a second)."""
    from serve.bundle import ONNX_FILE, OnnxPolicy, export_onnx, parity_states

    out.mkdir(parents=True, exist_ok=True)
    onnx = export_onnx(policy.net, out, parity_states(n_parity, seed), policy.checkpoint, seed)
    print(f"[evaluate] ONNX graph: parity {onnx['parity']['max_abs_diff']:.2g} on {n_parity} states",
          file=sys.stderr, flush=True)  # fmt: skip
    return OnnxPolicy(out / ONNX_FILE, policy.normalizer)


def evaluate_export(
    checkpoint: str,
    out: Path,
    days: int,
    seed: int,
    baselines: list[str],
    site: str | None = None,
    scenario: str = "broken_clouds",
    episode_s: int = 86_400,
    start_s: int = 0,
) -> dict[str, dict[str, float]]:
    """Evaluate an export-domain checkpoint; writes metrics.json, criteria.json and plots under ``out``."""
    import polars as pl

    from envs.controllers import PolicyController
    from envs.export_env import ExportEnvConfig
    from envs.metrics import add_gap_closed, metrics_of_record
    from envs.plots import plot_cumulative_export, plot_day
    from envs.rollout import make_controller, rollout
    from rllib_configs.policy import load_policy

    policy = load_policy(checkpoint)
    trained_site = policy.info.get("env_config", {}).get("site")
    cfg = ExportEnvConfig(site=site or trained_site, scenario=scenario, episode_s=episode_s, start_s=start_s)
    site_obj = cfg.load_site()
    policy.for_site(site_obj)
    actor = onnx_actor(policy, out / "onnx", seed)
    max_w = site_obj.control.max_power_per_phase_w
    frames: dict[str, list[pl.DataFrame]] = {}
    for d in range(days):
        day_seed = held_out_day_seed(seed, d)
        day: dict[str, pl.DataFrame] = {}
        for name in ["policy", *baselines]:
            t0 = time.perf_counter()
            ctrl = (
                PolicyController(actor, max_w)
                if name == "policy"
                else make_controller(name, max_w, day_seed)
            )
            day[name] = rollout(ctrl, cfg, seed=day_seed).frame
            frames.setdefault(name, []).append(day[name])
            print(
                f"[evaluate] day {d + 1}/{days} {name}: {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        if d == 0:
            out.mkdir(parents=True, exist_ok=True)
            plot_day(day, out / "day_000.png", f"held-out day 0 ({scenario}), {Path(checkpoint).name}")
    traces = {n: pl.concat(f) for n, f in frames.items()}
    results = {n: metrics_of_record(t) for n, t in traces.items()}
    add_gap_closed(results)
    plot_cumulative_export(
        traces, out / "cumulative_export.png", f"cumulative export over {days} held-out day(s)"
    )
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    if "pi" in results:
        (out / "criteria.json").write_text(json.dumps(success_criteria(results), indent=2))
    return results


def evaluate_run(spec: Any, exp_dir: Path, seed: int) -> int:
    """``gridrl train --eval-only``: evaluate the run's latest checkpoint with default settings."""
    from rllib_configs.policy import latest_checkpoint

    ckpt = latest_checkpoint(exp_dir)
    out = exp_dir / "evaluation"
    results = evaluate_export(str(ckpt), out, spec.settings.eval_days, seed, ["pi", "oracle", "zero"])
    from scripts.simulate import metrics_table

    print(metrics_table(results), file=sys.stderr)
    print(json.dumps({"checkpoint": str(ckpt), "evaluation": str(out), "metrics": results["policy"]}))
    return 0


def checked_run_info(args: argparse.Namespace, output: OutputKind) -> dict[str, Any]:
    """What `gridrl evaluate` and `gridrl benchmark` check before they load anything, then the checkpoint's
    run info (rllib_configs/policy.py find_run_info): ValueError where --hours and --start-h end after
    midnight, OutputError where --out holds something else, FileNotFoundError for a checkpoint of no run."""
    from rllib_configs.policy import find_run_info

    if problem := check_window(args.hours, args.start_h):
        raise ValueError(problem)
    check_output(args.out, output, force=args.force)
    return find_run_info(args.checkpoint)


def evaluate_model_based(args: argparse.Namespace) -> int:
    """``gridrl evaluate --model M --dataset D``: the policy's metrics estimated with the forward model."""
    from envs.dynamics.evaluator import evaluate_with_model, format_results
    from rllib_configs.policy import load_policy

    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "oracle")
    try:
        with staged_output(args.out, EVALUATE_OUTPUT, force=args.force) as tmp:
            results = evaluate_with_model(
                load_policy(args.checkpoint), args.model, args.dataset, tmp, args.seed, args.windows,
                args.horizon_s, baselines,
            )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:  # OutputError too
        print(f"gridrl evaluate: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    print(json.dumps({"out": str(args.out), "policy": results["policy"]}))
    return 0


def run(args: argparse.Namespace) -> int:
    from scripts.simulate import metrics_table

    if bool(args.model) != bool(args.dataset):  # the flags first, then the files
        print("gridrl evaluate: --model and --dataset go together", file=sys.stderr)
        return 2
    try:
        info = checked_run_info(args, EVALUATE_OUTPUT)
    except (FileNotFoundError, ValueError) as exc:  # OutputError too
        print(f"gridrl evaluate: {exc}", file=sys.stderr)
        return 2
    if args.model or args.dataset:
        return evaluate_model_based(args)
    out = Path(args.out)
    if info.get("domain") == "citylearn":
        from envs.citylearn.evaluate import evaluate_policy, kpi_table
        from rllib_configs.policy import load_policy

        try:
            with staged_output(out, EVALUATE_OUTPUT, force=args.force) as tmp:
                results = evaluate_policy(
                    load_policy(args.checkpoint), tmp, days=args.days, seed=args.seed,
                    progress=lambda msg: print(msg, file=sys.stderr, flush=True),
                )  # fmt: skip
        except ValueError as exc:
            print(f"gridrl evaluate: {exc}", file=sys.stderr)
            return 2
        print(kpi_table(results))
        print(json.dumps({"out": str(out), "policy": results["policy"]}))
        return 0
    from envs.rollout import BASELINES

    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    if unknown := [b for b in baselines if b not in BASELINES]:
        print(
            f"gridrl evaluate: --baselines: unknown {unknown}; known: {', '.join(BASELINES)}", file=sys.stderr
        )
        return 2
    try:
        with staged_output(out, EVALUATE_OUTPUT, force=args.force) as tmp:
            results = evaluate_export(
                args.checkpoint, tmp, args.days, args.seed, baselines, args.site, args.scenario,
                int(round(args.hours * 3600)), int(round(args.start_h * 3600)),
            )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:  # OutputError, ConfigError (site) name the file
        print(f"gridrl evaluate: {exc}", file=sys.stderr)
        return 2
    print(metrics_table(results))
    if "pi" in results:
        print(criteria_table(success_criteria(results), fmt=".2f"))
    print(json.dumps({"out": str(out), "policy": results["policy"]}))
    return 0
