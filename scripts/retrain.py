"""``gridrl retrain``: a deployed bundle retrained on new logs, shipped only if it beats what runs now.

    gridrl retrain --bundle OLD --logs NEW_LOGS... --dataset D --out DIR [--seed S]

The new logs (raw folders of ``gridrl data generate``, an operator's exports, Serve's shadow or production
logs ``LOG_DIR/raw/<site_id>``) are merged into the dataset D, built into DIR/dataset (D is left as it
was); the forward model and the policy are fine-tuned from their previous checkpoints on it (DIR/runs);
the new policy and the old bundle's controller are judged on the same validation days by the promotion
rule (envs/promotion.py), in the site's simulator (or, with ``--judge model``, by the fine-tuned forward
model, whose verdict carries its trust). The new bundle is written to DIR/bundle only if the new policy
beats the PI by the rule and, where the old bundle is not the PI, the old controller too; otherwise it
says why, writes no bundle and leaves the old one untouched. DIR/report.json holds the verdicts either way.

Where the checkpoints come from: the old bundle's manifest (``training.checkpoint``, and
``retrain.forward_model`` for a bundle written by retrain), else the report.json beside the bundle of
the run that wrote it (``gridrl pipeline``'s OUT/report.json: its policy and forward model, also when
it shipped the PI), else ``--policy-checkpoint`` / ``--model-checkpoint``, which override both.

Each stage prints one progress line on stderr; then the verdict's checks and ``shipped: ...: why``. The
last stdout line is JSON, with ``shipped``: ``{"controller": "policy" | "old", "reason", "bundle"}``
(``policy``: the new bundle in DIR/bundle; ``old``: nothing new, the old bundle stays). What Ray and RLlib
print goes to DIR/retrain.log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from envs.tables import format_table
from scripts.flags import HOURS, SEED, START_H, add_ray, check_window, command_parser, float_in, int_at_least


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from envs.promotion import PromotionConfig

    rule = PromotionConfig()
    p = command_parser(sub, "retrain", __doc__)
    p.add_argument("--bundle", required=True, help="the bundle deployed now (its folder or manifest.json)")
    p.add_argument(
        "--logs", required=True, nargs="+", action="extend", type=Path, metavar="LOGS",
        help="folder(s) of new raw logs: gridrl data generate's, an operator's, or Serve's "
             "LOG_DIR/raw/<site_id>",
    )  # fmt: skip
    p.add_argument("--dataset", required=True, type=Path, help="the dataset the old policy was trained on")
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) folder for the run")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the fine-tunes and of the validation days")
    p.add_argument(
        "--policy-checkpoint", default=None,
        help="the policy checkpoint to fine-tune, where the bundle records none (a PI bundle, or one from "
             "gridrl export): an offline run's (BC, CQL, IQL, MARWIL) checkpoint or run folder",
    )  # fmt: skip
    p.add_argument(
        "--model-checkpoint",
        default=None,
        help="the forward-model checkpoint (or its run folder) to fine-tune, where the bundle records none",
    )
    p.add_argument(
        "--policy-iters",
        type=int_at_least(1),
        default=2,
        help="training iterations of the policy's fine-tune (default 2: a laptop's minutes)",
    )
    p.add_argument(
        "--model-iters",
        type=int_at_least(1),
        default=1,
        help="training iterations of the forward model's fine-tune (default 1)",
    )
    p.add_argument(
        "--model-steps", type=int_at_least(0), default=50,
        help="optimiser steps per forward-model iteration (training.steps_per_iter; default 50: the demo's "
             "model takes 300, 620 s on 2 loaded cores; 0 = the run's own)",
    )  # fmt: skip
    p.add_argument(
        "--policy-set", action="append", default=[], metavar="KEY=VALUE",
        help="change a key of the policy's training YAML (dotted, YAML value), e.g. "
             "offline_data.dataset_num_iters_per_learner=200; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a key of the forward model's YAML, e.g. training.steps_per_iter=100; repeatable",
    )
    p.add_argument(
        "--margin-pct", type=float_in(0, 99.999), default=rule.margin_pct,
        help=f"the rule's margin: the new policy must export at least this %% less than the PI (and than the "
             f"old controller) on the validation days (default {rule.margin_pct:g})",
    )  # fmt: skip
    p.add_argument(
        "--val-days",
        type=int_at_least(1),
        default=rule.days,
        help=f"validation days, one weather after another (default {rule.days})",
    )
    p.add_argument(
        "--val-hours",
        type=HOURS,
        default=2.0,
        help="hours of each validation day (default 2, as the demo pipeline; 24 = whole days)",
    )
    p.add_argument(
        "--val-start-hour",
        type=START_H,
        default=11.0,
        help="local hour each validation window starts (default 11)",
    )
    p.add_argument(
        "--judge", choices=("simulator", "model"), default="simulator",
        help="who judges: the site's simulator (default), or the fine-tuned forward model (a site without a "
             "simulator: its verdict carries its trust, and an untrusted verdict promotes nothing)",
    )  # fmt: skip
    p.add_argument(
        "--model-windows",
        type=int_at_least(1),
        default=16,
        help="forward-model judge: logged daylight windows of the validation split (default 16)",
    )
    p.add_argument(
        "--model-horizon-s",
        type=int_at_least(1),
        default=120,
        help="forward-model judge: seconds per window (default 120)",
    )
    add_ray(p)
    return p


def _config(args: argparse.Namespace) -> Any:
    from envs.promotion import PromotionConfig
    from rllib_configs.finetune import parse_overrides
    from serve.retrain import RetrainConfig

    if problem := check_window(args.val_hours, args.val_start_hour, "--val-hours", "--val-start-hour"):
        raise ValueError(problem)
    rule = PromotionConfig(margin_pct=args.margin_pct, days=args.val_days, hours=args.val_hours,
                           start_h=args.val_start_hour, model_windows=args.model_windows,
                           model_horizon_s=args.model_horizon_s)  # fmt: skip
    return RetrainConfig(
        policy_iters=args.policy_iters, model_iters=args.model_iters,
        policy_overrides=parse_overrides(args.policy_set, "--policy-set"),
        model_overrides=_model_overrides(args),
        promotion=rule, judge=args.judge, seed=args.seed,
    )  # fmt: skip


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--model-set's keys, with --model-steps as training.steps_per_iter unless --model-set names it."""
    from rllib_configs.finetune import parse_overrides

    overrides = parse_overrides(args.model_set, "--model-set")
    if args.model_steps:
        overrides.setdefault("training.steps_per_iter", args.model_steps)
    return overrides


def promotion_table(
    title: str, verdicts: list[tuple[str, dict[str, Any]]], last: str = "passed", note: str = ""
) -> str:
    """The promotion rule's checks, one verdict a column: each check's value (``NO`` where it failed) and
    target, then a row ``last`` that says which verdicts promote (with ``note`` as its target)."""
    first = verdicts[0][1]["checks"]
    rows = [
        [row["check"], *(_check(v["checks"][i]) for _, v in verdicts), row["target"]]
        for i, row in enumerate(first)
    ]
    rows.append([last, *("yes" if v["promoted"] else "no" for _, v in verdicts), note])
    columns = [title, *(t for t, _ in verdicts), "target"]
    return format_table(rows, columns, align="<" + ">" * len(verdicts) + "<")


def _check(r: dict[str, Any]) -> str:
    return f"{r['value']:.2f}{'' if r['passed'] else ' NO'}"


def format_verdicts(promotion: dict[str, Any]) -> str:
    """The rule's checks: the new policy vs the PI, the old controller vs the PI, the new vs the old."""
    titles = (("new_vs_pi", "new vs PI"), ("old_vs_pi", "old vs PI"), ("new_vs_old", "new vs old"),
              ("forward_model", "model: new vs PI"))  # fmt: skip
    verdicts = [(t, promotion[k]) for k, t in titles if promotion.get(k)]
    return promotion_table(f"promotion check ({promotion['judge']})", verdicts)


def run(args: argparse.Namespace) -> int:
    from envs.outputs import OutputError, OutputKind, check_output
    from serve.retrain import RetrainError, check_inputs

    out = Path(args.out)
    try:
        cfg = _config(args)
        if out.is_dir() and any(out.iterdir()):
            raise OutputError(out, "is not empty: choose another --out (a retrain writes a new folder)")
        out = check_output(out, OutputKind("the results of gridrl retrain", ("report.json",)))
        inputs = check_inputs(args.bundle, args.logs, args.dataset, args.policy_checkpoint,
                              args.model_checkpoint, cfg)  # fmt: skip
    except (RetrainError, OutputError, ValueError) as exc:
        print(f"gridrl retrain: {exc}", file=sys.stderr)
        return 2
    return _run(args, cfg, inputs, out.resolve())


def _run(args: argparse.Namespace, cfg: Any, inputs: Any, out: Path) -> int:
    from offline_data.progress import Stages
    from scripts.quiet import ray_job
    from serve.retrain import retrain

    out.mkdir(parents=True, exist_ok=True)
    with ray_job(out, "retrain", args.address, args.num_cpus) as job:
        stages = Stages(7 if cfg.judge == "simulator" else 6, stream=job.console.err, prefix="[retrain]")
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "command"]
        report = retrain(inputs, out, cfg, stages, ["gridrl", "retrain", *argv])
    print(format_verdicts(report["promotion"]))
    shipped = report["shipped"]
    dataset = report["dataset"]
    job.finish(report, "the retrained policy" if shipped["controller"] == "policy" else "nothing new", {
        "shipped": shipped, "dataset": dataset["merged"], "days_added": dataset["days_added"],
        "policy": report["policy"]["checkpoint"], "forward_model": report["forward_model"]["checkpoint"],
    })  # fmt: skip
    return 0
