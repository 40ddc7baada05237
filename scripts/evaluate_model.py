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

from envs.outputs import OutputKind, check_output, staged_output
from envs.tables import format_table
from scripts.flags import HOURS, SEED, START_H, check_window, command_parser, int_at_least

# What `gridrl evaluate-model` always writes.
EVALUATE_MODEL_OUTPUT = OutputKind("the results of gridrl evaluate-model", ("model_metrics.json",))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = command_parser(sub, "evaluate-model", __doc__)
    p.add_argument(
        "--checkpoint", required=True, help="forward-model checkpoint dir, or its training run dir (newest)"
    )
    p.add_argument("--dataset", required=True, help="dataset folder from `gridrl data build`")
    p.add_argument(
        "--out", default="runs/evaluate-model", help="output directory (default runs/evaluate-model)"
    )
    p.add_argument("--force", action="store_true", help="replace an earlier result at --out")
    p.add_argument("--seed", type=SEED, default=0, help="selects the scored windows (default 0)")
    p.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="split to score (default test)"
    )
    p.add_argument(
        "--windows", type=int_at_least(0), default=0, help="k-step windows scored (default 0 = all)"
    )
    p.add_argument(
        "--rollouts", type=int_at_least(1), default=1_000, help="30-step rollouts scored (default 1000)"
    )
    rank = p.add_argument_group("rank-correlation check (model-based estimate vs simulator)")
    rank.add_argument(
        "--rank-policies",
        default=None,
        help="comma-separated controllers: pi, zero, rbc, random or RLlib checkpoint paths",
    )
    rank.add_argument(
        "--rank-windows",
        type=int_at_least(1),
        default=32,
        help="test-split daylight windows per controller (default 32)",
    )
    rank.add_argument(
        "--rank-horizon", type=int_at_least(1), default=600, help="seconds per window (default 600)"
    )
    rank.add_argument(
        "--rank-availability",
        choices=("energy", "replay"),
        default="energy",
        help="available power in the model's rollouts: energy (a phase is no longer available once the "
        "controller has commanded it the energy the logged controller did before the log's availability "
        "dropped; default) or replay (as logged, whatever the controller did)",
    )
    rank.add_argument(
        "--rank-balance",
        choices=("replay", "model"),
        default="replay",
        help="export in the model's rollouts: replay (the logged export plus the logged minus the predicted "
        "acknowledged power: PV and base load as logged; default) or model (the model's own prediction)",
    )
    rank.add_argument(
        "--sim-seed",
        type=SEED,
        default=None,
        help="seed the dataset's raw logs were generated with: the simulator then replays the test split's "
        "own days and scores the same windows (default: held-out days, --sim-days etc.)",
    )
    rank.add_argument(
        "--sim-days",
        type=int_at_least(1),
        default=3,
        help="simulated held-out days per controller (default 3)",
    )
    rank.add_argument(
        "--sim-hours", type=HOURS, default=8.0, help="hours per simulated day from --sim-start-h (default 8)"
    )
    rank.add_argument(
        "--sim-start-h",
        type=START_H,
        default=8.0,
        help="local start hour of each simulated window (default 8)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    if problem := check_window(args.sim_hours, args.sim_start_h, "--sim-hours", "--sim-start-h"):
        print(f"gridrl evaluate-model: {problem}", file=sys.stderr)
        return 2
    import torch

    from envs.dynamics.data import load_split
    from envs.dynamics.evaluate import format_report
    from envs.dynamics.evaluator import resolve_model_checkpoint

    torch.set_num_threads(2)
    try:
        check_output(args.out, EVALUATE_MODEL_OUTPUT, force=args.force)  # before anything is loaded
        ckpt = resolve_model_checkpoint(args.checkpoint)
        split = load_split(args.dataset, args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gridrl evaluate-model: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        with staged_output(out, EVALUATE_MODEL_OUTPUT, force=args.force) as tmp:
            report, rank = _evaluate(args, ckpt, split, tmp)
    except (FileNotFoundError, ValueError) as exc:  # OutputError, a bad --rank-policies entry
        print(f"gridrl evaluate-model: {exc}", file=sys.stderr)
        return 2
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
    if rank is not None:
        print(format_rank(rank))
        summary["spearman_rho"] = rank["spearman_rho"]
    print(json.dumps(summary))
    return 0


def _evaluate(args: argparse.Namespace, ckpt: Path, split, out: Path) -> tuple[dict, dict | None]:
    """The report (and the rank check) written under ``out``."""
    import numpy as np

    from envs.dynamics.evaluate import evaluate_model, write_report
    from envs.dynamics.evaluator import rank_check, site_limits_of
    from envs.dynamics.model import ForwardModel

    model = ForwardModel.load(ckpt)
    max_w, _ = site_limits_of(args.dataset)
    report = evaluate_model(
        model, split, max_w, args.windows, args.rollouts, np.random.default_rng(args.seed)
    )
    report.update(
        {"checkpoint": str(ckpt), "dataset": str(args.dataset), "split": args.split, "seed": args.seed}
    )
    write_report(report, out)
    if not args.rank_policies:
        return report, None
    rank = rank_check(
        str(ckpt),
        args.dataset,
        rank_policies(args.rank_policies),
        out,
        args.seed,
        args.rank_windows,
        args.rank_horizon,
        args.sim_days,
        args.sim_hours,
        args.sim_start_h,
        gen_seed=args.sim_seed,
        availability=args.rank_availability,
        balance=args.rank_balance,
    )
    return report, rank


def rank_policies(flag: str) -> dict:
    """``--rank-policies``: baselines (pi, zero, rbc, random) or RLlib checkpoints, ``PATH`` or ``NAME=PATH``,
    as rank_check's name -> baseline name or loaded policy."""
    from envs.dynamics.evaluator import BASELINES
    from rllib_configs.policy import load_policy

    policies: dict = {}
    for p in (p.strip() for p in flag.split(",")):
        if p in BASELINES:
            policies[p] = p
        elif p:
            name, _, path = p.rpartition("=") if "=" in p else (Path(p).name, "", p)
            policies[name] = load_policy(path)
    return policies


def format_rank(rank: dict) -> str:
    m = rank["metric"]
    rows = [
        [n, rank["model"][n][m], rank["simulator"][n][m], rank["model"][n]["trusted_share"]]
        for n in rank["controllers"]
    ]
    columns = ["controller", f"model {m}", f"simulator {m}", "trusted"]
    table = format_table(rows, columns, fmt=[None, ".3f", ".3f", ".2f"])
    return table + f"\nSpearman rho ({m}, {len(rank['controllers'])} controllers): {rank['spearman_rho']:.3f}"
