"""``gridrl pipeline``: the end-to-end main job, stage by stage, on a local embedded Ray by default.

Stages (the ones that exist so far): compare the baseline controllers (PI, oracle, zero) on held-out
simulated days, each controller-day a Ray task. Later stages (logs -> dataset -> BC -> CQL -> evaluate
-> bundle -> serve) join as they land.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROFILES = {
    # days of baseline comparison, hours per day window
    "demo": {"days": 1, "hours": 24.0},
    "full": {"days": 7, "hours": 24.0},
}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pipeline",
        help="the end-to-end main job (demo profile: minutes on 2 cores)",
        description="Run gridrl's stages end to end on a local embedded Ray (or --address).",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="demo (default) or full")
    p.add_argument("--out", default="runs/pipeline", help="output directory (default runs/pipeline)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--address", default=None, help="Ray cluster address (default: embedded local Ray)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the embedded Ray (default 2)")
    return p


def _stage(name: str) -> float:
    print(f"[pipeline] stage: {name} ...", file=sys.stderr, flush=True)
    return time.perf_counter()


def _done(name: str, t0: float) -> None:
    print(f"[pipeline] stage: {name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def compare_baselines(out: Path, days: int, hours: float, seed: int) -> dict:
    """Run PI, oracle and zero on the same cloudy days as Ray tasks; write metrics.json."""
    import polars as pl
    import ray

    from envs.export_env import ExportEnvConfig
    from envs.metrics import add_gap_closed, metrics_of_record
    from envs.rollout import make_controller, rollout

    @ray.remote(num_cpus=1)
    def run_one(name: str, day_seed: int) -> pl.DataFrame:
        cfg = ExportEnvConfig(scenario="broken_clouds", episode_s=int(hours * 3600), start_s=0)
        return rollout(make_controller(name, 7500, seed=day_seed), cfg, seed=day_seed).frame

    names = ("pi", "oracle", "zero")
    refs = {(n, d): run_one.remote(n, seed * 10_000 + d) for n in names for d in range(days)}
    frames = {k: ray.get(r) for k, r in refs.items()}
    results = {n: metrics_of_record(pl.concat([frames[(n, d)] for d in range(days)])) for n in names}
    add_gap_closed(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(results, indent=2))
    return results


def run(args: argparse.Namespace) -> int:
    from cluster.local import init_ray
    from scripts.simulate import format_table

    prof = PROFILES[args.profile]
    out = Path(args.out)
    t_all = time.perf_counter()
    init_ray(args.address, num_cpus=args.num_cpus)
    t0 = _stage("compare baselines on cloudy days")
    results = compare_baselines(out, prof["days"], prof["hours"], args.seed)
    _done("compare baselines on cloudy days", t0)
    print(format_table(results))
    summary = {"profile": args.profile, "out": str(out), "wall_s": round(time.perf_counter() - t_all, 1),
               "baselines": {k: {"export_kwh": v["export_kwh"]} for k, v in results.items()}}
    print(json.dumps(summary))
    return 0
