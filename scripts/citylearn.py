"""``gridrl citylearn``: build the mall's CityLearn schema, evaluate controllers on any CityLearn schema.

gridrl citylearn build-schema --site envs/sites/iquitos_mall.yaml --out runs/mall [--days 3] [--seed 0]
gridrl citylearn evaluate --schema runs/mall/schema.json --out runs/mall_eval [--days 7] [--policy CKPT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from envs.config import ConfigError

SUMMARY_KPIS = (
    "cost_total",
    "carbon_emissions_kg",
    "grid_import_kwh",
    "grid_export_kwh",
    "daily_peak_import_mean_kw",
    "ramping_mean_kw",
    "ev_departure_success_ratio",
    "solar_self_consumption_ratio",
    "co2_emitted_kg",
    "co2_indirect_reduction_kg",
    "co2_direct_reduction_kg",
    "episode_return",
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``citylearn`` and its sub-commands to ``subparsers``."""
    p = subparsers.add_parser(
        "citylearn",
        help="CityLearn domain: build the mall schema, evaluate baselines and policies",
        description="CityLearn domain: build the Iquitos mall schema, run controllers on a CityLearn schema.",
    )
    sub = p.add_subparsers(dest="citylearn_command", metavar="SUBCOMMAND", required=True)

    b = sub.add_parser(
        "build-schema",
        help="write schema.json + CSVs for a site YAML",
        description="Generate a site's hourly profiles (PV, load, EV sessions, tariff, CO2) and write a "
        "CityLearn 3.0.2 schema. Nothing is downloaded. The defaults reproduce the mall's figures.",
    )
    b.add_argument("--site", default=None, help="site YAML (default: envs/sites/iquitos_mall.yaml)")
    b.add_argument("--out", required=True, help="output folder for schema.json, the CSVs and summary.json")
    b.add_argument("--days", type=int, default=None, help="days to write (default: the whole calendar, 365)")
    b.add_argument("--start-day", type=int, default=0, help="first day written, 0 = January 1st (default 0)")
    b.add_argument("--seed", type=int, default=0, help="seed of every generated profile (default 0)")

    e = sub.add_parser(
        "evaluate",
        help="run baselines (and a policy) over one episode, write kpis.json and dispatch.png",
        description="Run controllers on the same episode of any CityLearn schema (the mall's, or a local "
        "challenge dataset) and write DIR/kpis.json ({controller: {kpi: value}}) and DIR/dispatch.png.",
    )
    e.add_argument("--schema", required=True, help="schema.json, its folder, or a dataset folder name under "
                   "$CITYLEARN_LOCAL_DATASETS_PATH")  # fmt: skip
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument(
        "--controllers",
        default="no_control,rbc",
        help="comma-separated baselines: no_control, rbc, citylearn_rbc, zero (default no_control,rbc)",
    )
    e.add_argument("--policy", default=None, help="RLlib checkpoint folder; evaluated under 'policy'")
    e.add_argument(
        "--days",
        type=int,
        default=None,
        help="episode length in days (default: the whole schema; CityLearn's KPIs take minutes on a year)",
    )
    e.add_argument(
        "--start-day", type=int, default=0, help="first day of the episode within the schema (default 0)"
    )
    e.add_argument(
        "--seed", type=int, default=0, help="reset seed, the same for every controller (default 0)"
    )
    e.add_argument(
        "--co2-factor", type=float, default=0.4521, help="kg CO2 per kWh imported (default 0.4521)"
    )
    e.add_argument("--plot-days", type=int, default=7, help="days shown in dispatch.png (default 7)")
    p.set_defaults(func=run)
    return p


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    from envs.citylearn.schema import build_schema
    from envs.citylearn.site import DEFAULT_MALL_SITE_PATH, load_site

    site_path = Path(args.site) if args.site else DEFAULT_MALL_SITE_PATH
    site = load_site(site_path)
    t0 = time.perf_counter()
    _say(f"building {site.name} from {site_path} (seed {args.seed}) ...")
    try:
        result = build_schema(site, args.out, days=args.days, start_day=args.start_day, seed=args.seed)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        source = site_path if field.startswith("ev.") else "command line"
        raise ConfigError(source, field if problem else "<input>", problem or str(exc)) from exc
    _say(f"wrote {result.schema_path} in {time.perf_counter() - t0:.1f} s")
    print(json.dumps(result.summary, indent=2))
    return 0


def _window(schema_path: Path, days: int | None, start_day: int) -> dict[str, int]:
    schema = json.loads(schema_path.read_text())
    per_day = int(round(86400 / float(schema.get("seconds_per_time_step") or 3600)))
    first = int(schema.get("simulation_start_time_step") or 0)
    last = int(schema.get("simulation_end_time_step"))
    start = first + start_day * per_day
    end = last if days is None else start + days * per_day - 1
    if start_day < 0 or (days is not None and days < 1) or end > last or start >= end:
        problem = f"window steps [{start}, {end}] is outside the schema's [{first}, {last}]"
        raise ConfigError(schema_path, "--days/--start-day", problem)
    return {"start_time_step": start, "end_time_step": end}


def _evaluate(args: argparse.Namespace) -> int:
    from envs.citylearn.env import resolve_schema
    from envs.citylearn.evaluate import evaluate_controllers, load_rllib_policy

    schema = resolve_schema(args.schema)
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    policies = {"policy": load_rllib_policy(args.policy)} if args.policy else None
    env_config = {"schema": str(schema), **_window(schema, args.days, args.start_day)}
    try:
        results = evaluate_controllers(
            env_config, args.out, controllers=controllers, policies=policies, seed=args.seed,
            co2_factor=args.co2_factor, plot_days=args.plot_days, progress=_say,
        )  # fmt: skip
    except ValueError as exc:
        if "controllers:" in str(exc):
            raise ConfigError(None, "--controllers", str(exc).split(": ", 1)[1]) from exc
        raise
    names = list(results)
    print(f"{'kpi':32s}" + "".join(f"{n:>16s}" for n in names))
    for k in SUMMARY_KPIS:
        vals = [results[n].get(k) for n in names]
        print(f"{k:32s}" + "".join(f"{v:16.4g}" if v is not None else f"{'-':>16s}" for v in vals))
    _say(f"wrote {Path(args.out) / 'kpis.json'} and {Path(args.out) / 'dispatch.png'}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``gridrl citylearn SUBCOMMAND``; a bad input prints one line naming the file and field, exit 2."""
    try:
        if args.citylearn_command == "build-schema":
            return _build(args)
        return _evaluate(args)
    except ConfigError as exc:
        print(f"gridrl citylearn: error: {exc}", file=sys.stderr)
        return 2
