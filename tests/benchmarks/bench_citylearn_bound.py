"""Diagnostic: how far below the CityLearn RBC any controller could go on the held-out weeks.

Not a test. For each of the training configs' held-out weeks it runs the RBC (and no control) through
``gridrl evaluate``'s own KPIs (envs/citylearn/evaluate.py ``evaluate_weeks``) and solves
envs/citylearn/oracle.py's perfect-foresight linear programs on the same week: one that minimises cost, one
that minimises CO2. It prints each plan's cost and CO2 against the RBC's: the ceiling of issue 18's "5 %
below the RBC" target. The bound knows the whole week in advance and relaxes the simulator where that can
only help it (oracle.py's docstring), so a policy that sees the present reaches less; how much less is what
the hand-written causal rules of bench_citylearn_offsets.py and the trained policies measure.

    .venv/bin/python tests/benchmarks/bench_citylearn_bound.py [--schema PATH] [--seed 0] [--replay]

``--replay`` also runs plans in the simulator itself, step by step (``PlanReplay``), for several mixes of
the two objectives (a share of cost from 0 to 1): how much of the bound survives CityLearn's own losses.
These plans are made to be run, not to bound: a vehicle's battery loses about 10 % one way at a socket's
power (``--vehicle-efficiency 0.88``), and each departing vehicle is planned 0.03 SoC above its target, one
step before it leaves (``--soc-margin 0.03``), as the RBC aims. The battery stays idealised (the best of its
efficiency curve). They still know the week ahead, so they are a yardstick, not a controller.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from envs.citylearn.env import CityLearnRLlibEnv  # noqa: E402
from envs.citylearn.evaluate import aggregate_kpis, evaluate_weeks  # noqa: E402
from envs.citylearn.oracle import PlanReplay, oracle_kpis  # noqa: E402
from envs.tables import format_table  # noqa: E402

DISTRICT = "../shared/citylearn/citylearn_challenge_2022_phase_all_plus_evs"
HOLDOUT = (8, 21, 34, 47)  # rllib_configs/citylearn/*.yaml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schema", default=DISTRICT, help="CityLearn schema (default: the 2022 district)")
    p.add_argument("--seed", type=int, default=0, help="reset seed of every week (the evaluation's)")
    p.add_argument("--replay", action="store_true", help="also run plans in the simulator (module docstring)")
    p.add_argument("--shares", default="0,0.25,0.5,0.75,1", help="--replay: shares of cost in the objective")
    p.add_argument("--vehicle-efficiency", type=float, default=0.88, help="--replay: vehicles' battery loss")
    p.add_argument("--soc-margin", type=float, default=0.03, help="--replay: SoC planned above each target")
    args = p.parse_args(argv)
    try:
        shares = [float(x) for x in args.shares.split(",")]
    except ValueError:
        p.error(f"--shares: comma-separated numbers in [0, 1], got {args.shares!r}")
    if not all(0.0 <= x <= 1.0 for x in shares):
        p.error(f"--shares: every share must be in [0, 1], got {args.shares!r}")
    config = {"schema": args.schema, "episode_time_steps": 168, "holdout_weeks": list(HOLDOUT)}
    env = CityLearnRLlibEnv(config)
    weeks = env.heldout_windows()
    with tempfile.TemporaryDirectory() as out:
        results = evaluate_weeks(env, weeks, out, controllers=("no_control", "rbc"), seed=args.seed)
    bounds: dict[str, list[dict[str, float]]] = {"bound: least cost": [], "bound: least CO2": []}
    for start, end in weeks:
        env.use_window(start, end)
        bounds["bound: least cost"].append(oracle_kpis(env, "cost", seed=args.seed))
        bounds["bound: least CO2"].append(oracle_kpis(env, "co2", seed=args.seed))
    results.update({name: aggregate_kpis(per_week) for name, per_week in bounds.items()})
    if args.replay:
        replayed: dict[str, list[dict]] = {}
        for k, week in enumerate(weeks):
            env.use_window(*week)
            plans = {
                f"plan run in CityLearn, cost share {a:g}": PlanReplay(
                    env, objective=a, seed=args.seed, vehicle_efficiency=args.vehicle_efficiency,
                    soc_margin=args.soc_margin).for_window()
                for a in shares
            }  # fmt: skip
            with tempfile.TemporaryDirectory() as out:
                ran = evaluate_weeks(env, [week], out, controllers=(), policies=plans, seed=args.seed)
            for name, kpis in ran.items():
                replayed.setdefault(name, []).append(kpis)
            print(f"week {k + 1}/{len(weeks)} replayed", file=sys.stderr, flush=True)
        results.update({name: aggregate_kpis(per_week) for name, per_week in replayed.items()})
    rbc = results["rbc"]
    print(f"{args.schema}: held-out weeks {list(HOLDOUT)} ({len(weeks)} episodes), seed {args.seed}")
    rows = [
        [name, k["cost_total"], 100 * (1 - k["cost_total"] / rbc["cost_total"]), k["carbon_emissions_kg"],
         100 * (1 - k["carbon_emissions_kg"] / rbc["carbon_emissions_kg"]), k["ev_charged_kwh"],
         k["ev_departure_shortfall_kwh"], k.get("ev_departure_success_ratio")]
        for name, k in results.items()
    ]  # fmt: skip
    columns = ("controller", "cost", "cost vs RBC %", "CO2 kg", "CO2 vs RBC %", "EV kWh", "EV short kWh",
               "EV success")  # fmt: skip
    print(format_table(rows, columns, fmt=[None, ".1f", "+.1f", ".1f", "+.1f", ".0f", ".1f", ".3f"]))
    print("vs RBC: reduction (positive: lower than the RBC's); bounds: perfect foresight (oracle.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
