"""``gridrl pipeline``: the end-to-end main job, stage by stage, on a local embedded Ray by default.

Stages: generate raw logs of the PI with its dispatch preference dithered within its stated bound
(offline_data/generate.py ``dithered_preference``: the PI's own total every second, split over the phases
with a preference drawn every 10 minutes; the logs an operator would record, with the coverage offline
learning needs; with real-log defects) -> build the RLlib dataset -> the forward dynamics model (trained on
the dataset, scored on its test split against persistence) -> the policy: the offline supervisor, the PI's
dispatch preference chosen from the logs alone (rllib_configs/offline_supervisor.py, ``gridrl supervise``:
it can only split the PI's total; it keeps the outlook rule's preference unless an ensemble of Q networks
fitted on the logs is sure of a better one; residual IQL and CQL, which replace the PI's per-second targets,
lost to the PI on the benchmark suite: README, "The offline supervisor") -> evaluation of the policy against
the PI, the oracle and no control on held-out days -> the same policy estimated with the forward model on
the test split, with the estimate's trust -> the promotion rule (envs/promotion.py): the policy against the
PI on validation days in the site's simulator (and, for information, as the forward model would judge it
without one) -> export of what the rule ships as the bundle: the policy (ONNX + manifest, parity-checked)
only if it beats the PI by the margin (``--margin-pct``), with controlled import at most 1.1x the PI's (or
less wasted energy) and no safety violation; otherwise the PI (a manifest-only ``controller: pi`` bundle) ->
a short shadow run of the shipped bundle behind Ray Serve on loopback, with simulated site traffic (the PI
acts, the bundle's controller is logged) -> a report.

Each stage prints one progress line; then come the tables and the line ``shipped: CONTROLLER: why``; the
last stdout line is a JSON summary, whose ``shipped`` is ``{"controller": "policy" | "pi", "reason": ...}``
as in report.json. What
Ray, RLlib, Tune and Serve print goes to ``OUT/pipeline.log`` (scripts/quiet.py), their workers' logs to
Ray's session folder; the summary names both.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from offline_data.progress import Stages
from scripts.flags import SEED, add_ray, command_parser, float_in

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """Sizes of the pipeline's stages."""

    log_days: int
    log_hours: float
    log_start_hour: float
    model_iters: int
    policy_epochs: int
    """Passes of each offline supervisor's Q network over the logs (OfflineSupervisorConfig.epochs)."""
    model_windows: int
    model_horizon_s: int
    eval_days: int
    eval_hours: float
    eval_start_hour: float
    shadow_hours: float
    promotion_days: int = 5
    """Validation days of the promotion rule (one weather after another, envs/promotion.py)."""
    promotion_hours: float = 24.0
    promotion_start_hour: float = 0.0
    preference_period_s: int = 600
    """Seconds the logging controller holds each drawn preference (PreferenceDitherConfig.period_s)."""
    shrink: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Overrides of the training YAMLs per config ('forward_model'): dotted key -> value. The patched
    YAMLs are written to OUT/configs/ and trained from there (the tiny profile's sizes)."""


PROFILES = {
    # demo: daylight windows, a short forward model, the supervisor's default fit: minutes on 2 cores
    "demo": Profile(
        log_days=2, log_hours=8.0, log_start_hour=8.0, model_iters=1, policy_epochs=40,
        model_windows=16, model_horizon_s=120, eval_days=1, eval_hours=6.0, eval_start_hour=9.0,
        shadow_hours=0.05, promotion_days=5, promotion_hours=2.0, promotion_start_hour=11.0,
    ),
    # full: a week of whole days of logs (the supervisor's fit: under a minute; the 8-iteration forward
    # model: hours on 2 cores, README), three whole held-out days, 5 whole validation days
    "full": Profile(
        log_days=7, log_hours=24.0, log_start_hour=0.0, model_iters=8, policy_epochs=40,
        model_windows=64, model_horizon_s=600, eval_days=3, eval_hours=24.0, eval_start_hour=0.0,
        shadow_hours=1.0,
    ),
    # tiny: every stage at the smallest size that runs it (CI's run of the job: tests/test_pipeline_run.py)
    "tiny": Profile(
        log_days=2, log_hours=1.5, log_start_hour=10.0, model_iters=1, policy_epochs=2,
        model_windows=4, model_horizon_s=60, eval_days=1, eval_hours=0.25, eval_start_hour=11.0,
        shadow_hours=0.02, promotion_days=5, promotion_hours=0.25, promotion_start_hour=11.0,
        preference_period_s=300,
        shrink={
            "forward_model": {
                "model.hidden": 32, "model.members": 2, "model.context": 6, "training.steps_per_iter": 20,
                "training.batch_size": 64, "training.val_windows": 300, "training.num_threads": 1,
            },
        },
    ),
}  # fmt: skip
CONFIGS = {
    "forward_model": "rllib_configs/export/forward_model.yaml",
    "policy": "rllib_configs/export/ppo_supervisor.yaml",  # the supervisor's module, period, gate, discount
}
POLICY = "the offline supervisor"
"""What the reports and the console call the trained policy."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = command_parser(sub, "pipeline", __doc__)
    p.add_argument(
        "--profile", choices=sorted(PROFILES), default="demo",
        help="demo (default, minutes), full (a week of logs) or tiny (every stage at its smallest: CI)",
    )  # fmt: skip
    p.add_argument("--out", default="runs/pipeline", help="output directory (default runs/pipeline)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of every stage")
    add_ray(p)
    p.add_argument(
        "--margin-pct", type=float_in(0, 99.999), default=None,
        help="promotion rule: the policy ships only if it exports at least this %% less than the PI on "
             "the validation days (default: envs/promotion.py PromotionConfig.margin_pct, 5)",
    )  # fmt: skip
    return p


def _train(config: Path, dataset: Path, runs: Path, name: str, iters: int, seed: int) -> dict:
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training

    spec = load_train_config(config, dataset=str(dataset))
    opts = RunOptions(storage_path=runs, seed=seed, stop_iters=iters, name=name)
    return run_training(spec, opts)


def model_stage(dataset: Path, runs: Path, seed: int, iters: int, config: Path) -> dict[str, Any]:
    """The forward model: train ``config`` (forward_model.yaml) on ``dataset`` through the runner, then score
    it on the test split (``gridrl evaluate-model``'s report, in ``RUNS/forward_model/evaluation``).

    Returns:
        The training summary with ``evaluation`` (the criteria rows and whether all passed) added.
    """
    import numpy as np

    from envs.dynamics.data import load_split, site_path
    from envs.dynamics.evaluate import evaluate_model, write_report
    from envs.dynamics.model import ForwardModel
    from envs.site import load_site

    summary = _train(config, dataset, runs, "forward_model", iters, seed)
    max_w = load_site(site_path(dataset)).control.max_power_per_phase_w
    model = ForwardModel.load(summary["checkpoint"])
    # a sample of the test split's windows: all of a week's 100k k-step windows take minutes on 2 cores
    report = evaluate_model(model, load_split(dataset, "test"), max_w, windows=20_000, rollouts=500,
                            rng=np.random.default_rng(seed))  # fmt: skip
    write_report(report, Path(runs) / "forward_model" / "evaluation")
    return {**summary, "evaluation": {"passed": report["passed"], "criteria": report["criteria"]}}


def supervisor_stage(dataset: Path, runs: Path, seed: int, prof: Profile, config: Path) -> dict[str, Any]:
    """The policy: the offline supervisor learned from ``dataset`` (``gridrl supervise``) into
    ``RUNS/policy``; returns ``checkpoint`` (its RLModule) and the learner's report (``offline``)."""
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, train

    cfg = OfflineSupervisorConfig(config=str(config), period_s=prof.preference_period_s,
                                  epochs=prof.policy_epochs)  # fmt: skip
    report = train(dataset, runs / "policy", cfg, seed=seed)
    return {"checkpoint": str((runs / "policy" / "module").resolve()), "offline": report}


def stage_configs(prof: Profile, out: Path) -> dict[str, Path]:
    """The training YAML of each stage: the repository's, or a copy with the profile's ``shrink`` overrides
    (written to OUT/configs/, so the report's paths name what was trained)."""
    import yaml

    from envs.config import load_yaml
    from rllib_configs.finetune import apply_overrides

    paths = {}
    for name, rel in CONFIGS.items():
        paths[name] = REPO / rel
        if not prof.shrink.get(name):
            continue
        data = apply_overrides(load_yaml(REPO / rel), prof.shrink[name], rel)
        paths[name] = out / "configs" / f"{name}.yaml"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(yaml.safe_dump(data, sort_keys=False))
    return paths


def promotion_stage(
    checkpoint: str, dataset: Path, model: dict[str, Any], prof: Profile, seed: int, margin_pct: float | None
) -> dict[str, Any]:
    """The promotion rule on the trained policy: judged in the dataset's site's simulator (the verdict that
    decides), and with the forward model as a site without a simulator would judge it (for information)."""
    from envs.controllers import PolicyController
    from envs.dynamics.data import site_path
    from envs.dynamics.evaluator import judge_with_model
    from envs.promotion import PromotionConfig, judge_in_simulator
    from envs.site import load_site
    from rllib_configs.policy import load_policy

    site = site_path(dataset)
    site_obj = load_site(site)
    policy = PolicyController(load_policy(checkpoint).for_site(site_obj),
                              site_obj.control.max_power_per_phase_w)  # fmt: skip
    margin = {} if margin_pct is None else {"margin_pct": margin_pct}
    config = PromotionConfig(**margin, days=prof.promotion_days, hours=prof.promotion_hours,
                             start_h=prof.promotion_start_hour, model_windows=prof.model_windows,
                             model_horizon_s=prof.model_horizon_s)  # fmt: skip
    verdict = judge_in_simulator(policy, site, config, seed, name=POLICY)
    by_model = judge_with_model(policy, model["checkpoint"], dataset, config, seed,
                                model["evaluation"]["criteria"], name=POLICY)  # fmt: skip
    return {"site": site, "simulator": verdict.to_dict(), "forward_model": by_model.to_dict()}


def ship(
    promotion: dict[str, Any], checkpoint: str, out: Path, evaluation: dict[str, float], seed: int
) -> dict[str, str]:
    """Write the bundle the rule ships: the policy if promoted, else the PI's; returns ``shipped``."""
    from serve.bundle import export_baseline, export_checkpoint

    verdict = promotion["simulator"]
    if verdict["promoted"]:
        export_checkpoint(checkpoint, out, evaluation=evaluation, seed=seed)
        return {"controller": "policy", "reason": verdict["reason"], "bundle": str(out)}
    export_baseline("pi", out, promotion["site"])
    return {"controller": "pi", "reason": verdict["reason"] + "; the PI ships", "bundle": str(out)}


def dataset_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The report's ``dataset``: rows read, used and quarantined per stream, and transitions per split.

    From the keys ``gridrl data build`` writes (offline_data/build.py): ``counts`` and
    ``stages.transitions`` (``rows`` per split, ``dropped_at_split_cuts``).
    """
    return {"counts": manifest["counts"], "transitions": manifest["stages"]["transitions"]}


def run(args: argparse.Namespace) -> int:
    from scripts.quiet import ray_job

    prof = PROFILES[args.profile]
    out = Path(args.out).resolve()
    if out.is_dir() and any(out.iterdir()):
        print(f"gridrl pipeline: {out} is not empty: choose another --out", file=sys.stderr)
        return 2
    from envs.outputs import OutputError, OutputKind, check_output

    try:  # a file, a path under a file, an unwritable place: named before anything starts
        check_output(out, OutputKind("the results of gridrl pipeline", ("report.json",)))
    except OutputError as exc:
        print(f"gridrl pipeline: {exc}", file=sys.stderr)
        return 2
    # Ray, RLlib, Tune, Ray Data and Serve write to this process's stdout and stderr: to pipeline.log; the
    # workers' own output stays in Ray's session folder (log_to_driver=False); the user sees the stages.
    with ray_job(out, "pipeline", args.address, args.num_cpus) as job:
        from envs.dynamics.evaluator import format_results
        from envs.tables import criteria_table
        from scripts.simulate import metrics_table

        report = _stages(args, prof, out, Stages(total=9, stream=job.console.err))
    results, criteria = report["metrics"], report["criteria"]
    fwd, model_based = report["forward_model"], report["model_based"]
    print(metrics_table(results))
    print(criteria_table(criteria, fmt=".2f"))
    fm = fwd["evaluation"]["criteria"]
    print("forward model on the test split: " + ", ".join(
        f"{r['criterion']} {r['value']:.4g} ({'ok' if r['passed'] else 'NOT met'})" for r in fm))
    print("model-based estimate (test split, no simulator; an estimate: the simulator's table above is the "
          "reference)")
    print(format_results(model_based))
    print(format_promotion(report["promotion"]))
    shipped = report["shipped"]
    job.finish(report, POLICY if shipped["controller"] == "policy" else "the PI", {
        "export_kwh": {k: round(v["export_kwh"], 3) for k, v in results.items()},
        "shipped": {"controller": shipped["controller"], "reason": shipped["reason"]},
    })  # fmt: skip
    return 0


def format_promotion(promotion: dict[str, Any]) -> str:
    """The promotion rule's checks, by the simulator (the verdict) and by the forward model (information)."""
    from scripts.retrain import promotion_table

    sim, mod = promotion["simulator"], promotion["forward_model"]
    if len(sim["checks"]) != len(mod["checks"]):
        raise ValueError(
            f"promotion: {len(sim['checks'])} simulator checks, {len(mod['checks'])} model checks"
        )
    verdicts = [("simulator", sim), ("forward model", mod)]
    return promotion_table("promotion check", verdicts, last="promoted", note="(the simulator's)")


def _stages(args: argparse.Namespace, prof: Profile, out: Path, stages: Stages) -> dict[str, Any]:
    """The nine stages; returns the report (without the wall time and the logs)."""
    from envs.controllers import PreferenceDitherConfig
    from envs.dynamics.evaluator import evaluate_with_model
    from offline_data.build import BuildConfig, build
    from offline_data.generate import GenerateConfig, generate
    from rllib_configs.policy import load_policy
    from scripts.evaluate import evaluate_export, success_criteria
    from scripts.serve import serve_and_drive

    gen = GenerateConfig(days=prof.log_days, hours=prof.log_hours, start_hour=prof.log_start_hour,
                         seed=args.seed, defects=0.02, scenario="random", controller="dithered_preference",
                         preference=PreferenceDitherConfig(period_s=prof.preference_period_s))  # fmt: skip
    stages.run("generate raw logs of the PI with a dithered dispatch preference (bounded exploration)",
               generate, gen, out / "raw")  # fmt: skip
    manifest = stages.run("build the dataset", build, out / "raw", out / "dataset", BuildConfig(),
                          seed=args.seed, progress=False)  # fmt: skip
    configs = stage_configs(prof, out)
    fwd = stages.run("forward model: train, score on the test split", model_stage, out / "dataset",
                     out / "runs", args.seed, prof.model_iters, configs["forward_model"])  # fmt: skip
    policy = stages.run("the offline supervisor: the PI's dispatch preference learned from the logs",
                        supervisor_stage, out / "dataset", out / "runs", args.seed, prof,
                        configs["policy"])  # fmt: skip
    results = stages.run(
        "evaluate the policy against PI, oracle and no control on held-out days", evaluate_export,
        policy["checkpoint"], out / "evaluation", prof.eval_days, args.seed, ["pi", "oracle", "zero"], None,
        "broken_clouds", int(prof.eval_hours * 3600), int(prof.eval_start_hour * 3600),
    )
    model_based = stages.run(
        "model-based estimate of the policy vs PI on the test split (no simulator)",
        lambda: evaluate_with_model(
            load_policy(policy["checkpoint"]), fwd["checkpoint"], str(out / "dataset"),
            out / "evaluation_model", args.seed, prof.model_windows, prof.model_horizon_s, ("pi", "zero"),
            model_criteria=fwd["evaluation"]["criteria"],
        ),
    )
    promotion = stages.run(
        "promotion rule: the policy vs PI on validation days (simulator; forward model for information)",
        promotion_stage, policy["checkpoint"], out / "dataset", fwd, prof, args.seed, args.margin_pct,
    )
    promoted = promotion["simulator"]["promoted"]
    what = f"{POLICY} (ONNX parity-checked)" if promoted else "the PI (the policy did not beat it)"
    shipped = stages.run(f"export {what} as the bundle", ship, promotion, policy["checkpoint"],
                         out / "bundle", results["policy"], args.seed)  # fmt: skip
    shadow = stages.run(
        "shadow run of the shipped bundle behind Ray Serve (simulated traffic)", serve_and_drive,
        str(out / "bundle"), out / "serve", prof.shadow_hours, args.seed, address=args.address,
        num_cpus=args.num_cpus,
    )  # fmt: skip
    criteria = success_criteria(results)
    return {
        "profile": args.profile, "settings": asdict(prof), "seed": args.seed, "out": str(out),
        "stage_s": stages.timings, "dataset": dataset_summary(manifest),
        "configs": {k: str(v) for k, v in configs.items()},
        "forward_model": fwd, "model_based": model_based, "policy": policy,
        "promotion": promotion, "shipped": shipped, "bundle": str(out / "bundle"),
        "shadow": shadow, "metrics": results, "criteria": criteria,
    }
