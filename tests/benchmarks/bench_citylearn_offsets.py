"""Diagnostic: what simple corrections to the CityLearn RBC give on the held-out weeks.

Not a test. A learned policy in ``action_mode: rbc_residual, residual_per: kind`` (rllib_configs/citylearn)
picks two numbers an hour: a correction to every battery's RBC action and one to every charger's. This runs
hand-written choices of those two numbers (held all the time, or only in some hours) on the training
config's held-out weeks, through ``gridrl evaluate``'s own KPIs (envs/citylearn/evaluate.py
``evaluate_weeks``), and prints each one's cost and CO2 against the RBC's on the same weeks, with its EV
departure success and its return under the default reward. It answers: is the RBC a local optimum for the
moves a supervising policy can make, and what does the reward say about the ones that cut cost?

With ``--rules`` it also runs causal rules that read the tariff (the price now and CityLearn's three
forecasts, which the policy observes) instead of the clock: batteries that charge from the grid when the price
is below ``lo`` times the forecasts' mean and do not discharge while it is below ``hold`` times it, and
vehicles that charge fast only while the price is below ``th`` times that mean (or on PV surplus) and
otherwise only what later steps at full power could not deliver before departure, the battery covering the
difference. They answer: does the price signal alone leave an easy gain that the RBC misses?

    .venv/bin/python tests/benchmarks/bench_citylearn_offsets.py [--schema PATH] [--scale 0.3] [--seed 0]
        [--rules]

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

from envs.citylearn.devices import DeviceTable, energy_to_target, rbc_action, state_from_env  # noqa: E402
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


def price_ratio(env: CityLearnRLlibEnv) -> float:
    """The price now over the mean of CityLearn's three price forecasts (what the policy observes)."""
    cl = env.citylearn
    t, pricing = cl.time_step, cl.buildings[0].pricing
    ahead = [getattr(pricing, f"electricity_pricing_predicted_{k}")[t] for k in (1, 2, 3)]
    return float(pricing.electricity_pricing[t]) / max(float(np.mean(ahead)), 1e-9)


class PriceBattery:
    """The RBC, but batteries charge at full power while the price ratio is < ``lo`` and hold (no discharge)
    while it is < ``hold``."""

    def __init__(self, env: CityLearnRLlibEnv, lo: float, hold: float):
        self.env, self.lo, self.hold = env, lo, hold
        self.table = DeviceTable.from_env(env.citylearn)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = rbc_action(self.table, state_from_env(self.env.citylearn, self.table))
        r = price_ratio(self.env)
        for b in self.table.buildings:
            if b.battery is not None:
                s = b.battery.slot
                a[s] = 1.0 if r < self.lo else (0.0 if a[s] < 0 and r < self.hold else a[s])
        return a


class PriceEV:
    """The RBC, but a plugged vehicle charges as fast as it may while the price ratio is < ``th`` or PV
    exceeds the load, else only what the steps left (at full power, less one) could not deliver; the
    battery's action absorbs the change (within its power)."""

    def __init__(self, env: CityLearnRLlibEnv, th: float):
        self.env, self.th = env, th
        self.table = DeviceTable.from_env(env.citylearn)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        state = state_from_env(self.env.citylearn, self.table)
        a = rbc_action(self.table, state)
        cheap, h, j = price_ratio(self.env) < self.th, self.table.step_hours, 0
        for bi, b in enumerate(self.table.buildings):
            change = 0.0
            for c in b.chargers:
                connected, soc, required, hours, cap = state.ev[j]
                j += 1
                if connected < 0.5 or not np.isfinite(required) or not np.isfinite(cap):
                    continue
                need = energy_to_target(c, soc, required, cap)  # the RBC's own need and margin
                p_max = c.max_charging_power_kw * h
                if need <= 1e-9 or p_max <= 0:
                    continue
                late = need - (hours / h - 2.0) * p_max  # what full power after this step cannot deliver
                kwh = min(need if cheap or state.pv[bi] > state.load[bi] else max(late, 0.0), p_max)
                kwh = max(kwh, c.min_charging_power_kw * h)
                change += kwh - a[c.slot] * p_max
                a[c.slot] = kwh / p_max
            if b.battery is not None and b.battery.nominal_power_kw > 0:
                s = b.battery.slot
                a[s] = np.clip(a[s] - change / (b.battery.nominal_power_kw * h), -1.0, 1.0)
        return a


def rules(env: CityLearnRLlibEnv) -> dict[str, PriceBattery | PriceEV]:
    """The ``--rules`` controllers by name."""
    out: dict[str, PriceBattery | PriceEV] = {}
    for lo in (0.6, 0.8):
        for hold in (0.0, 1.0):
            out[f"rule: batteries, price lo {lo} hold {hold}"] = PriceBattery(env, lo, hold)
    for th in (0.9, 1.0):
        out[f"rule: vehicles, price th {th}"] = PriceEV(env, th)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schema", default=DISTRICT, help="CityLearn schema (default: the 2022 district)")
    p.add_argument("--scale", type=float, default=0.3, help="residual_scale of the corrections")
    p.add_argument("--seed", type=int, default=0, help="reset seed of every week (the evaluation's)")
    p.add_argument("--rules", action="store_true", help="also the price-reading rules (module docstring)")
    args = p.parse_args(argv)
    # direct mode, as gridrl evaluate runs every controller: a plan's action is the RBC plus its correction
    env = CityLearnRLlibEnv(
        {"schema": args.schema, "episode_time_steps": 168, "holdout_weeks": list(HOLDOUT)}
    )
    weeks = env.heldout_windows()
    policies = {name: HourPlan(env, plan, args.scale) for name, plan in plans().items()}
    if args.rules:
        policies.update(rules(env))
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
