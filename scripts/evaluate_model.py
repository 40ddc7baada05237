"""``gridrl evaluate-model``: the forward model's criteria on a dataset split, against persistence.

    gridrl evaluate-model --checkpoint RUN_OR_CHECKPOINT --dataset DS [--out DIR] [--seed S]
    gridrl evaluate-model --checkpoint C --dataset DS --rank-policies zero,random,pi,rbc,POLICY_CKPT

Writes DIR/model_metrics.json and DIR/rollout_error.png (error growth over 10- and 30-step open-loop
rollouts); prints the model-vs-persistence table and the criteria; the last line is a JSON summary. With
``--rank-policies`` it also runs the rank-correlation check (envs/dynamics/evaluator.py rank_check): each
controller's export estimated through the model on the test split vs the simulator's own result, and
Spearman's rho, in DIR/rank_check.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate-model",
        help="evaluate a forward dynamics model on a dataset's test split (and rank policies with it)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, help="forward-model checkpoint dir, or its training run dir (newest)"
    )
    p.add_argument("--dataset", required=True, help="dataset folder from `gridrl data build`")
    p.add_argument(
        "--out", default="runs/evaluate-model", help="output directory (default runs/evaluate-model)"
    )
    p.add_argument("--seed", type=int, default=0, help="selects the scored windows (default 0)")
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to score (default test)"
    )
    p.add_argument("--windows", type=int, default=0, help="k-step windows scored (default 0 = all)")
    p.add_argument("--rollouts", type=int, default=1_000, help="30-step rollouts scored (default 1000)")
    rank = p.add_argument_group("rank-correlation check (model-based estimate vs simulator)")
    rank.add_argument(
        "--rank-policies",
        default=None,
        help="comma-separated controllers: pi, zero, rbc, random or RLlib checkpoint paths",
    )
    rank.add_argument(
        "--rank-windows", type=int, default=32, help="test-split daylight windows per controller (default 32)"
    )
    rank.add_argument("--rank-horizon", type=int, default=600, help="seconds per window (default 600)")
    rank.add_argument(
        "--sim-seed",
        type=int,
        default=None,
        help="seed the dataset's raw logs were generated with: the simulator then replays the test split's "
        "own days and scores the same windows (default: held-out days, --sim-days etc.)",
    )
    rank.add_argument(
        "--sim-days", type=int, default=3, help="simulated held-out days per controller (default 3)"
    )
    rank.add_argument(
        "--sim-hours", type=float, default=8.0, help="hours per simulated day from --sim-start-h (default 8)"
    )
    rank.add_argument(
        "--sim-start-h", type=float, default=8.0, help="local start hour of each simulated window (default 8)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from envs.dynamics.data import load_split
    from envs.dynamics.evaluate import evaluate_model, format_report, write_report
    from envs.dynamics.evaluator import rank_check, resolve_model_checkpoint, site_limits_of
    from envs.dynamics.model import ForwardModel

    torch.set_num_threads(2)
    try:
        ckpt = resolve_model_checkpoint(args.checkpoint)
        split = load_split(args.dataset, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gridrl evaluate-model: {exc}", file=sys.stderr)
        return 2
    model = ForwardModel.load(ckpt)
    max_w, _ = site_limits_of(args.dataset)
    report = evaluate_model(
        model, split, max_w, args.windows, args.rollouts, np.random.default_rng(args.seed)
    )
    report.update(
        {"checkpoint": str(ckpt), "dataset": str(args.dataset), "split": args.split, "seed": args.seed}
    )
    out = Path(args.out)
    write_report(report, out)
    print(format_report(report))
    summary = {
        "out": str(out),
        "checkpoint": str(ckpt),
        "passed": report["passed"],
        "mse": report["one_window"]["mse"],
        "export_mae_w": report["one_window"]["export_mae_w"],
        "persistence_mse": report["one_window"]["persistence_mse"],
        "persistence_export_mae_w": report["one_window"]["persistence_export_mae_w"],
        "rollout_stable": report["rollout"]["stable"],
    }
    if args.rank_policies:
        policies = [p.strip() for p in args.rank_policies.split(",") if p.strip()]
        rank = rank_check(
            str(ckpt),
            args.dataset,
            policies,
            out,
            args.seed,
            args.rank_windows,
            args.rank_horizon,
            args.sim_days,
            args.sim_hours,
            args.sim_start_h,
            gen_seed=args.sim_seed,
        )
        print(format_rank(rank))
        summary["spearman_rho"] = rank["spearman_rho"]
    print(json.dumps(summary))
    return 0


def format_rank(rank: dict) -> str:
    m = rank["metric"]
    lines = [f"{'controller':24s}{'model ' + m:>20s}{'simulator ' + m:>22s}{'trusted':>9s}"]
    for n in rank["controllers"]:
        lines.append(
            f"{n:24s}{rank['model'][n][m]:20.3f}{rank['simulator'][n][m]:22.3f}"
            f"{rank['model'][n]['trusted_share']:9.2f}"
        )
    lines.append(f"Spearman rho ({m}, {len(rank['controllers'])} controllers): {rank['spearman_rho']:.3f}")
    return "\n".join(lines)
