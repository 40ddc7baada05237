"""Diagnostic: what simple corrections to the CityLearn RBC give on the held-out weeks.

Not a test. A learned policy in ``action_mode: rbc_residual, residual_per: kind`` (rllib_configs/citylearn)
picks two numbers an hour: a correction to every battery's RBC action and one to every charger's. This runs
hand-written choices of those two numbers (held all the time, or only in some hours) on the training
config's held-out weeks, through ``gridrl evaluate``'s own KPIs (envs/citylearn/evaluate.py
``evaluate_weeks``), and prints each one's cost and CO2 against the RBC's on the same weeks, with its EV
departure success and its return under the default reward. It answers: is the RBC a local optimum for the
moves a supervising policy can make, and what does the reward say about the ones that cut cost?

    .venv/bin/python tests/benchmarks/bench_citylearn_offsets.py [--schema PATH] [--scale 0.3] [--seed 0]

``--scale`` is the ``residual_scale`` (a correction of 1 moves each device's action by that much).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from envs.citylearn.devices import DeviceTable  # noqa: E402
from envs.citylearn.env import CityLearnRLlibEnv, residual_action  # noqa: E402
from envs.citylearn.evaluate import evaluate_weeks  # noqa: E402
from envs.tables import format_table  # noqa: E402

DISTRICT = "../shared/citylearn/citylearn_challenge_2022_phase_all_plus_evs"
HOLDOUT = (8, 21, 34, 47)  # rllib_configs/citylearn/*.yaml


def plans() -> dict[str, Callable[[int], tuple[float, float]]]:
    """Name -> (hour 1-24 -> (battery correction, charger correction))."""
    return {
        "batteries +1": lambda h: (1.0, 0.0),
        "batteries -1": lambda h: (-1.0, 0.0),
        "chargers +1": lambda h: (0.0, 1.0),
        "chargers -1": lambda h: (0.0, -1.0),
        "batteries +1 at 00-05 h": lambda h: (1.0 if h <= 5 else 0.0, 0.0),
        "batteries -1 at 10-16 h": lambda h: (-1.0 if 10 <= h <= 16 else 0.0, 0.0),
        "batteries -1 at 00-08 h": lambda h: (-1.0 if h <= 8 else 0.0, 0.0),
        "chargers -1 at 16-22 h": lambda h: (0.0, -1.0 if 16 <= h <= 22 else 0.0),
        "chargers +1 at 00-06 h": lambda h: (0.0, 1.0 if h <= 6 else 0.0),
    }


class HourPlan:
    """The RBC plus a correction per kind of device that depends only on the hour."""

    def __init__(self, env: CityLearnRLlibEnv, plan: Callable[[int], tuple[float, float]], scale: float):
        self.env, self.plan, self.scale = env, plan, scale
        self.devices = DeviceTable.from_env(env.citylearn)
        self.kinds, self.groups = self.devices.kind_groups()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        cl = self.env.citylearn
        hour = int(cl.buildings[0].energy_simulation.hour[cl.time_step])
        by_kind = dict(zip(("battery", "charger"), self.plan(hour), strict=True))
        correction = np.array([by_kind[k] for k in self.kinds])
        return residual_action(cl, self.devices, correction, self.scale, self.groups).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schema", default=DISTRICT, help="CityLearn schema (default: the 2022 district)")
    p.add_argument("--scale", type=float, default=0.3, help="residual_scale of the corrections")
    p.add_argument("--seed", type=int, default=0, help="reset seed of every week (the evaluation's)")
    args = p.parse_args(argv)
    # direct mode, as gridrl evaluate runs every controller: a plan's action is the RBC plus its correction
    env = CityLearnRLlibEnv(
        {"schema": args.schema, "episode_time_steps": 168, "holdout_weeks": list(HOLDOUT)}
    )
    weeks = env.heldout_windows()
    policies = {name: HourPlan(env, plan, args.scale) for name, plan in plans().items()}
    with tempfile.TemporaryDirectory() as out:
        results = evaluate_weeks(env, weeks, out, controllers=("rbc",), policies=policies, seed=args.seed)
    rbc = results["rbc"]
    print(f"{args.schema}: held-out weeks {list(HOLDOUT)}, residual_scale {args.scale}, seed {args.seed}")
    rows = [
        [name, k["cost_total"], 100 * (1 - k["cost_total"] / rbc["cost_total"]), k["carbon_emissions_kg"],
         100 * (1 - k["carbon_emissions_kg"] / rbc["carbon_emissions_kg"]), k["ev_departure_success_ratio"],
         k["episode_return"]]
        for name, k in results.items()
    ]  # fmt: skip
    columns = ("correction", "cost", "cost vs RBC %", "CO2 kg", "CO2 vs RBC %", "EV success", "return")
    print(format_table(rows, columns, fmt=[None, ".1f", "+.1f", ".1f", "+.1f", ".3f", ".1f"]))
    print("vs RBC: reduction (positive: lower than the RBC's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
