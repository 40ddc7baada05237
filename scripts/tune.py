"""``gridrl tune``: a Tune sweep from a sweep file, with results, a plot and promotion of the best."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from scripts.flags import HOURS, SEED, START_H, add_mlflow, add_ray, float_in, int_at_least


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tune",
        help="run a Tune sweep (tune/<domain>/<algo>.yaml) and promote the best checkpoint",
        description=(
            "Sample --num-samples trials from the sweep file's search space, run them under its scheduler "
            "(ASHA by default), write results.csv/.parquet and sweep.png, and promote the best checkpoint to "
            "<storage-path>/best/<domain>/<algo>/ if it beats the one there. Where it promotes an export "
            "domain checkpoint, promotion.json records the promotion rule's verdict on its policy against "
            "the PI (envs/promotion.py, in the simulator, on --rule-days windows; recorded, not enforced). The "
            "last stdout line is JSON."
        ),
    )
    p.add_argument("--config", required=True, help="sweep file, e.g. tune/export/ppo.yaml")
    p.add_argument("--num-samples", type=int_at_least(1), default=None, help="trials to sample (default: the file's, 50)")
    p.add_argument("--max-concurrent", type=int_at_least(1), default=None, help="at most N trials at once (default: what fits)")
    p.add_argument("--storage-path", default="runs", help="root of the sweep and of best/ (default ./runs)")
    p.add_argument("--name", default=None, help="sweep name (default sweep-<domain>-<file stem>)")
    p.add_argument("--dataset", default=None, help="dataset directory (offline sweeps)")
    p.add_argument("--stop-iters", type=int_at_least(1), default=None,
                   help="per-trial budget: stop each trial after N training iterations (replaces the file's "
                        "stop.training_iteration, and ASHA's max_t with it)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep without rerunning finished trials")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the search and of every trial")
    p.add_argument("--rule-days", type=int_at_least(1), default=5,
                   help="promotion rule: validation days the promoted policy is judged on (default 5)")
    p.add_argument("--rule-hours", type=HOURS, default=0.5,
                   help="promotion rule: hours of each validation day, from --rule-start-hour (default 0.5: "
                        "seconds per promotion; 24 = whole days)")
    p.add_argument("--rule-start-hour", type=START_H, default=11.0,
                   help="promotion rule: window start (default 11)")
    p.add_argument("--margin-pct", type=float_in(0, 99.999), default=None,
                   help="promotion rule: the margin on export against the PI (default 5)")
    p.add_argument("--no-rule", action="store_true",
                   help="do not judge the promoted checkpoint by the promotion rule")
    add_mlflow(p)
    add_ray(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cluster.local import init_ray
    from envs.config import ConfigError
    from rllib_configs import storage
    from rllib_configs.runner import print_summary
    from tune.results import plot_sweep, promote, write_table
    from tune.spec import load_sweep
    from tune.sweep import SweepOptions, param_space, run_sweep

    if storage.is_uri(args.storage_path):
        print("gridrl tune: --storage-path must be a directory every node mounts (NFS, EFS, a KubeRay volume); "
              "sweep results and promotions are not written to object-store URIs yet (gridrl train accepts them)",
              file=sys.stderr)
        return 2
    from rllib_configs.tracking import TrackingError, resolve

    try:
        spec = load_sweep(args.config, dataset=args.dataset)
        mlflow = resolve(args.mlflow, args.storage_path)
    except (ConfigError, TrackingError) as exc:
        print(f"gridrl tune: {exc}", file=sys.stderr)
        return 2
    rule = None  # the promotion rule's validation days, checked before the sweep runs
    if not args.no_rule and spec.domain == "export":
        from envs.promotion import PromotionConfig

        margin = {} if args.margin_pct is None else {"margin_pct": args.margin_pct}
        try:
            rule = PromotionConfig(**margin, days=args.rule_days, hours=args.rule_hours,
                                   start_h=args.rule_start_hour)
        except ValueError as exc:
            print(f"gridrl tune: --rule-hours/--rule-start-hour: {exc}", file=sys.stderr)
            return 2
    if args.stop_iters is not None:
        if args.stop_iters < 1:
            print("gridrl tune: --stop-iters must be >= 1", file=sys.stderr)
            return 2
        spec.file = dataclasses.replace(spec.file, stop={**spec.file.stop, "training_iteration": args.stop_iters})
    opts = SweepOptions(
        storage_path=Path(args.storage_path), num_samples=args.num_samples or spec.file.num_samples,
        max_concurrent=args.max_concurrent, seed=args.seed, resume=args.resume, name=args.name, address=args.address,
        mlflow=mlflow,
    )
    init_ray(args.address, num_cpus=args.num_cpus)
    try:
        grid, exp_dir = run_sweep(spec, opts)
    except (FileExistsError, FileNotFoundError, RuntimeError) as exc:
        print(f"gridrl tune: {exc}", file=sys.stderr)
        return 2
    _, _, names = param_space(spec, args.seed)
    metric, mode = spec.file.metric, spec.file.mode
    table = write_table(grid, exp_dir, metric, names, mode)
    best = grid.get_best_result(metric=metric, mode=mode, scope="all", filter_nan_and_inf=True)
    plot = plot_sweep(grid, exp_dir, metric, best, names)
    promotion = promote(grid, exp_dir, Path(args.storage_path), spec.domain, spec.algorithm, metric, mode,
                        names, rule=rule, seed=args.seed)
    errors = sum(1 for r in grid if r.error)
    print_summary({"sweep": str(exp_dir), "trials": len(grid), "errors": errors, "results": str(table),
                   "plot": str(plot), **promotion})
    return 0
