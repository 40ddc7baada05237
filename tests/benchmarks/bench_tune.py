"""Benchmark: ASHA against FIFO on the same online sweep, the same budget, in one run.

Not a test. Both sweeps start from the same sweep file (default tune/export/ppo.yaml) with the same search
space, the same search seed (so the same N sampled configurations), the same per-trial stop criterion and
the same resources; only the scheduler differs. They run one after the other on one local Ray (each gets
the whole machine). For each it prints the best metric reached, the wall time, the training iterations
spent, and the wall time at which ASHA first matched FIFO's final best (and the other way round), from the
trials' results over time, plus both running bests at a few points in FIFO's wall time.

"Best" is measured at the full budget (results at training iteration --iters): every trial is seeded
alike, so at a given iteration all trials have trained on the same sequence of simulated episodes and
differ only by their hyperparameters, while a smoothed return at *different* iterations mostly measures
which episodes were drawn (at iteration 1 every trial reports the same return: nothing is trained yet).
The best over any iteration (what ``get_best_result(scope="all")`` takes) is printed too.

    .venv/bin/python tests/benchmarks/bench_tune.py [--num-samples 50] [--iters 4] [--train-batch 600]

The per-trial budget is kept small with flags (--iters, --train-batch, --minibatch) so that 2 x 50 trials
run in about 10-15 minutes on 2 CPUs; --train-batch fixes train_batch_size_per_learner and takes it out of
the search space (it would otherwise decide most of a trial's cost). Results also go to --out as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def load(args: argparse.Namespace, scheduler: str):
    from tune.spec import SchedulerSpec, load_sweep

    spec = load_sweep(REPO / args.config)
    training = {"minibatch_size": args.minibatch}
    if args.train_batch:
        training["train_batch_size_per_learner"] = args.train_batch
        spec.space.pop(("training", "train_batch_size_per_learner"), None)
    spec.train.algo_config.training(**training)  # on top of the file's overrides, for every trial alike
    file_sched = spec.file.scheduler
    sched = SchedulerSpec(type=scheduler, grace_period=args.grace_period or file_sched.grace_period,
                          reduction_factor=args.reduction_factor or file_sched.reduction_factor)
    spec.file = dataclasses.replace(spec.file, scheduler=sched, stop={"training_iteration": args.iters})
    return spec


def history(grid, metric: str) -> list[tuple[float, int, float, str]]:
    """(unix time, training iteration, metric, trial id) of every result of every trial, in time order."""
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or metric not in df:
            continue
        cols = (df["timestamp"], df["training_iteration"], df[metric], df["trial_id"])
        for ts, it, v, tid in zip(*cols, strict=True):
            if v == v:  # not NaN
                rows.append((float(ts), int(it), float(v), str(tid)))
    return sorted(rows)


def running_best(rows: list[tuple[float, float]], t0: float, mode: str) -> list[tuple[float, float]]:
    out, best = [], None
    for ts, v in rows:
        if best is None or (v > best if mode == "max" else v < best):
            best = v
            out.append((ts - t0, v))
    return out


def best_at(curve: list[tuple[float, float]], t: float) -> float | None:
    val = None
    for s, v in curve:
        if s <= t:
            val = v
    return val


def time_to(curve: list[tuple[float, float]], target: float, mode: str) -> float | None:
    for s, v in curve:
        if (v >= target if mode == "max" else v <= target):
            return s
    return None


def run_one(args: argparse.Namespace, scheduler: str, root: Path) -> dict:
    from tune.sweep import SweepOptions, run_sweep

    spec = load(args, scheduler)
    opts = SweepOptions(storage_path=root, num_samples=args.num_samples, seed=args.seed,
                        name=f"bench-{scheduler}", max_concurrent=args.max_concurrent)
    t0 = time.time()
    grid, _ = run_sweep(spec, opts)
    wall = time.time() - t0
    metric, mode = spec.file.metric, spec.file.mode
    rows = history(grid, metric)
    curve = running_best([(ts, v) for ts, it, v, _ in rows if it == args.iters], t0, mode)
    any_iter = running_best([(ts, v) for ts, _, v, _ in rows], t0, mode)
    ran = [int((r.metrics or {}).get("training_iteration") or 0) for r in grid]
    return {
        "scheduler": scheduler, "metric": metric, "mode": mode, "trials": len(grid),
        "errors": sum(1 for r in grid if r.error), "iterations": sum(ran),
        "stopped_early": sum(1 for n in ran if n < args.iters),
        "full_budget_trials": sum(1 for n in ran if n >= args.iters),
        "wall_s": round(wall, 1), "best": curve[-1][1] if curve else None,
        "best_any_iteration": any_iter[-1][1] if any_iter else None, "curve": curve,
        "results": [{"t": round(ts - t0, 1), "iteration": it, "value": v, "trial": tid}
                    for ts, it, v, tid in rows],
    }


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report(args: argparse.Namespace, fifo: dict, asha: dict) -> tuple[float | None, float | None]:
    mode = fifo["mode"]
    asha_to_fifo = time_to(asha["curve"], fifo["best"], mode) if fifo["best"] is not None else None
    fifo_to_asha = time_to(fifo["curve"], asha["best"], mode) if asha["best"] is not None else None
    g = load(args, "asha").file.scheduler
    print(f"\nbench_tune: {args.config}, {args.num_samples} samples, {args.iters} iterations/trial max, "
          f"ASHA grace {g.grace_period} reduction {g.reduction_factor:g}, "
          f"train batch {args.train_batch or 'searched'}, seed {args.seed}, {args.num_cpus} CPUs, "
          f"metric {fifo['metric']} ({mode})")
    print(f"{'scheduler':<10}{f'best at {args.iters} it':>14}{'best any it':>13}{'wall s':>9}"
          f"{'iterations':>12}{'full budget':>13}{'stopped early':>15}{'errors':>8}")
    for r in (fifo, asha):
        print(f"{r['scheduler']:<10}{fmt(r['best']):>14}{fmt(r['best_any_iteration']):>13}{r['wall_s']:>9.1f}"
              f"{r['iterations']:>12}{r['full_budget_trials']:>13}{r['stopped_early']:>15}{r['errors']:>8}")
    reached = (f"{asha_to_fifo:.0f} s ({asha_to_fifo / fifo['wall_s']:.0%} of FIFO's wall time)"
               if asha_to_fifo is not None else "never (ASHA's best stayed below it)")
    print(f"ASHA reached FIFO's final best ({fmt(fifo['best'])}) after: {reached}")
    print(f"FIFO reached ASHA's final best ({fmt(asha['best'])}) after: "
          + (f"{fifo_to_asha:.0f} s" if fifo_to_asha is not None else "never"))
    fractions = (0.25, 0.5, 0.75, 1.0)
    print("running best at:  " + "  ".join(f"{int(f * 100)}%".rjust(9) for f in fractions)
          + "  (of FIFO's wall time)")
    for r in (fifo, asha):
        vals = [best_at(r["curve"], f * fifo["wall_s"]) for f in fractions]
        print(f"  {r['scheduler']:<15}" + "  ".join(fmt(v, 2).rjust(9) for v in vals))
    return asha_to_fifo, fifo_to_asha


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tune/export/ppo.yaml", help="sweep file of an online config")
    ap.add_argument("--num-samples", type=int, default=50)
    ap.add_argument("--iters", type=int, default=4, 
                    help="per-trial budget: training iterations (ASHA's max_t)")
    ap.add_argument("--train-batch", type=int, default=600,
                    help="fixed train_batch_size_per_learner (0: keep the file's search over it)")
    ap.add_argument("--minibatch", type=int, default=200)
    ap.add_argument("--grace-period", type=int, default=None,
                    help="ASHA grace period (default: the sweep file's; keep it >= 2 with a training-return "
                         "metric: at iteration 1 nothing is trained yet and all trials tie)")
    ap.add_argument("--reduction-factor", type=float, default=None, 
                    help="ASHA reduction factor (default: the file's)")
    ap.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what fits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--order", default="fifo,asha", help="which sweep runs first (default fifo,asha)")
    ap.add_argument("--out", default=None, 
                    help="write the results (every trial's results over time) to this JSON file")
    args = ap.parse_args()

    from cluster.local import init_ray

    init_ray(num_cpus=args.num_cpus)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_tune_") as tmp:
        for scheduler in args.order.split(","):
            results[scheduler] = run_one(args, scheduler, Path(tmp))
    fifo, asha = results["fifo"], results["asha"]
    asha_to_fifo, fifo_to_asha = report(args, fifo, asha)
    summary = {"config": args.config, "num_samples": args.num_samples, "iters": args.iters,
               "train_batch": args.train_batch, "seed": args.seed, "num_cpus": args.num_cpus,
               "asha_time_to_fifo_best_s": asha_to_fifo, "fifo_time_to_asha_best_s": fifo_to_asha}
    if args.out:
        Path(args.out).write_text(json.dumps({**summary, "fifo": fifo, "asha": asha}, indent=2))
    import ray

    ray.shutdown()
    short = {k: {n: v for n, v in r.items() if n not in ("curve", "results")} for k, r in results.items()}
    print(json.dumps({**summary, **short}))


if __name__ == "__main__":
    main()
