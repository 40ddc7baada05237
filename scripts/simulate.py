"""``gridrl simulate``: run baseline controllers on the export simulator and compare them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

from envs.export_env import ExportEnvConfig
from envs.metrics import METRICS, add_gap_closed, metrics_of_record
from envs.outputs import OutputKind, staged_output
from envs.plots import plot_day
from envs.rollout import BASELINES, make_controller, rollout
from envs.site import DEFAULT_SITE_PATH
from envs.tables import format_table
from scripts.flags import SEED, add_day_window, add_output, add_scenario, check_window, int_at_least

# What `gridrl simulate` writes (always): how a folder of its results is recognised.
SIMULATE_OUTPUT = OutputKind("the results of gridrl simulate", ("metrics.json", "traces", "day_000.png"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "simulate",
        help="run controllers (PI, oracle, zero, random) on the export simulator",
        description=(
            "Run each controller on the same simulated days (1 s steps) and write DIR/metrics.json "
            "({controller: {metric: value}}), a trace Parquet per controller and a PNG per day."
        ),
    )
    p.add_argument(
        "--site", default=str(DEFAULT_SITE_PATH), help="site YAML (default: the shipped default site)"
    )
    p.add_argument(
        "--controllers", default="pi,oracle,zero", help=f"comma-separated, from {','.join(BASELINES)}"
    )
    p.add_argument("--days", type=int_at_least(1), default=1, help="number of days to simulate (default 1)")
    add_scenario(p)
    add_day_window(p)
    p.add_argument("--seed", type=SEED, default=0, help="seed: the same seed gives the same days and traces")
    add_output(p, "simulate")
    return p


def simulate(
    site: str,
    controllers: list[str],
    days: int,
    scenario: str,
    seed: int,
    out: Path,
    episode_s: int = 86_400,
    start_s: int = 0,
) -> dict[str, dict[str, float]]:
    """Run the controllers and write metrics, traces and plots under ``out``. Returns the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = ExportEnvConfig(site=site, scenario=scenario, episode_s=episode_s, start_s=start_s)
    max_w = cfg.load_site().control.max_power_per_phase_w
    per_controller: dict[str, list[pl.DataFrame]] = {c: [] for c in controllers}
    for d in range(days):
        day_seed = seed * 10_000 + d
        day_traces = {}
        for name in controllers:
            t0 = time.perf_counter()
            tr = rollout(make_controller(name, max_w, seed=day_seed), cfg, seed=day_seed)
            frame = tr.frame.with_columns(pl.lit(d).alias("day"))
            per_controller[name].append(frame)
            day_traces[name] = frame
            print(
                f"[simulate] day {d + 1}/{days} ({tr.scenario}, day-of-year {tr.day_of_year}) "
                f"{name}: {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        plot_day(day_traces, out / f"day_{d:03d}.png", f"day {d} ({scenario}), seed {seed}")
    results = {}
    (out / "traces").mkdir(exist_ok=True)
    for name, frames in per_controller.items():
        trace = pl.concat(frames)
        trace.write_parquet(out / "traces" / f"{name}.parquet")
        results[name] = metrics_of_record(trace)
    add_gap_closed(results)
    (out / "metrics.json").write_text(json.dumps(results, indent=2, allow_nan=True))
    return results


def metrics_table(results: dict[str, dict[str, float]]) -> str:
    """The comparison table of simulate, evaluate and pipeline: a metric a row, a controller a column."""
    names = list(results)
    rows = [[m, *(results[n].get(m, float("nan")) for n in names)] for m in METRICS]
    return format_table(rows, ["metric", *names], fmt=".3f")


def run(args: argparse.Namespace) -> int:
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    unknown = [c for c in controllers if c not in BASELINES]
    if unknown or not controllers:
        what = f"unknown controller(s) {unknown}" if unknown else "no controller given"
        print(f"gridrl simulate: --controllers: {what}; known: {', '.join(BASELINES)}", file=sys.stderr)
        return 2
    if problem := check_window(args.hours, args.start_h):
        print(f"gridrl simulate: {problem}", file=sys.stderr)
        return 2
    episode_s = int(round(args.hours * 3600))
    start_s = int(round(args.start_h * 3600))
    try:
        with staged_output(args.out, SIMULATE_OUTPUT, force=args.force) as tmp:
            results = simulate(
                args.site, controllers, args.days, args.scenario, args.seed, tmp, episode_s, start_s
            )
    except ValueError as exc:  # OutputError, and ConfigError naming the file and field
        print(f"gridrl simulate: {exc}", file=sys.stderr)
        return 2
    print(metrics_table(results))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
