"""``gridrl edge``: run a bundle under the edge runtime (numpy + onnxruntime) on the simulator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envs.outputs import OutputKind, staged_output
from scripts.flags import SEED, add_day_window, add_output, add_scenario, check_window, float_in, int_at_least

# What `gridrl edge` writes (always): how a folder of its results is recognised.
EDGE_OUTPUT = OutputKind("the results of gridrl edge", ("metrics.json", "checks.json", "decisions.jsonl"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "edge",
        help="run a bundle behind the safety wrapper, as on the edge box, on simulated days",
        description=(
            "The edge control loop (serve/edge.py: features, safety wrapper, ONNX or baseline, dispatcher, "
            "rotated decision log) driving the export simulator, 1 s per step. Writes DIR/metrics.json in "
            "`gridrl simulate`'s format ({name: {metric: value}}), DIR/checks.json, DIR/traces/NAME.parquet "
            "and DIR/decisions.jsonl. By default the days are the held-out days of "
            "`gridrl evaluate --seed S`, "
            "so the two can be compared; --days-of simulate gives those of `gridrl simulate --seed S`."
        ),
    )
    p.add_argument("--bundle", required=True, help="bundle directory (gridrl export)")
    p.add_argument("--site", default=None, help="site YAML (default: the shipped default site)")
    p.add_argument("--days", type=int_at_least(1), default=1, help="number of days (default 1)")
    add_day_window(p)
    add_scenario(p)
    p.add_argument("--seed", type=SEED, default=0, help="selects the days: the same seed gives the same days")
    p.add_argument(
        "--days-of",
        choices=["evaluate", "simulate"],
        default="evaluate",
        help="whose days --seed selects: gridrl evaluate's held-out days (default) or gridrl simulate's",
    )
    p.add_argument(
        "--log-max-mb",
        type=float_in(0, lo_open=True),
        default=5.0,
        help="rotate the decision log at this size (default 5 MB)",
    )
    p.add_argument(
        "--log-backups", type=int_at_least(0), default=3, help="rotated decision logs kept (default 3)"
    )
    p.add_argument(
        "--schema",
        default=None,
        help="CityLearn bundles: the schema to run on (default: the bundle's); --days days from --start-step "
        "hourly, behind the CityLearn safety wrapper (serve/citylearn_edge.py); the export domain's "
        "--site, --hours, --start-h, --scenario and --days-of do not apply",
    )
    p.add_argument(
        "--start-step",
        type=int_at_least(0),
        default=None,
        help="CityLearn bundles: first simulated step (default: the first of the bundle's training window)",
    )
    add_output(p, "edge")
    return p


def day_seeds(seed: int, days: int, days_of: str) -> list[int]:
    """The env seeds of the days ``gridrl evaluate`` (held out) or ``gridrl simulate`` would run."""
    from scripts.evaluate import held_out_day_seed

    return [held_out_day_seed(seed, d) if days_of == "evaluate" else seed * 10_000 + d for d in range(days)]


def run(args: argparse.Namespace) -> int:
    from serve.domains import domain_of
    from serve.edge import run_simulated

    try:
        domain = domain_of(args.bundle)
    except ValueError as exc:  # BundleError: no manifest, not JSON
        print(f"gridrl edge: {exc}", file=sys.stderr)
        return 2
    if domain == "citylearn":
        return _run_citylearn(args)
    if args.schema is not None or args.start_step is not None:
        print("gridrl edge: --schema and --start-step are for CityLearn bundles", file=sys.stderr)
        return 2
    if problem := check_window(args.hours, args.start_h):
        print(f"gridrl edge: {problem}", file=sys.stderr)
        return 2
    try:
        with staged_output(args.out, EDGE_OUTPUT, force=args.force) as tmp:
            results = run_simulated(
                args.bundle,
                tmp,
                day_seeds(args.seed, args.days, args.days_of),
                args.site,
                args.scenario,
                int(round(args.hours * 3600)),
                int(round(args.start_h * 3600)),
                max(1, int(args.log_max_mb * 1e6)),
                args.log_backups,
            )
    except (ValueError, FileNotFoundError) as exc:  # OutputError, BundleError, ConfigError name the file
        print(f"gridrl edge: {exc}", file=sys.stderr)
        return 2
    for name, metrics in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), file=sys.stderr)
    print(json.dumps({"out": str(Path(args.out)), **results}))
    return 0


def _run_citylearn(args: argparse.Namespace) -> int:
    from serve.citylearn_edge import run_citylearn_simulated

    try:
        with staged_output(args.out, EDGE_OUTPUT, force=args.force) as tmp:
            results = run_citylearn_simulated(
                args.bundle, tmp, args.schema, args.start_step, args.days, args.seed
            )
    except (ValueError, FileNotFoundError) as exc:  # OutputError, BundleError, ConfigError name the file
        print(f"gridrl edge: {exc}", file=sys.stderr)
        return 2
    for name, kpis in results.items():
        shown = ("cost_total", "carbon_emissions_kg", "ev_departure_success_ratio", "limit_violations")
        print(f"{name}: " + ", ".join(f"{k} {kpis.get(k)}" for k in shown), file=sys.stderr)
    print(json.dumps({"out": str(Path(args.out)), **results}))
    return 0
