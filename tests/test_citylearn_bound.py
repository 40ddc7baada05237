"""The perfect-foresight bound (envs/citylearn/oracle.py) on a real CityLearn env: it is a lower bound.

On two days of the staged 2022 district (17 buildings, 8 EV sockets), the least-cost plan must cost no
more than any controller that ran the same days (no control, the RBC, CityLearn's own RBC), the least-CO2
plan must emit no more than any of them, and each plan must be the better of the two on its own
objective. A bound that skipped a vehicle's energy or let a battery run free would cost less and still pass
the first checks; so the plan must also deliver at least the energy the RBC's departures needed, leaving
no more shortfall than the RBC does. A plan made to be run (``PlanReplay``, bench_citylearn_bound.py --replay)
must keep within every device's limits in the simulator itself.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from envs.citylearn.devices import DeviceTable
from envs.citylearn.env import CityLearnRLlibEnv
from envs.citylearn.evaluate import evaluate_controllers
from envs.citylearn.oracle import PlanReplay, oracle_kpis, plan_episode

DISTRICT = "../shared/citylearn/citylearn_challenge_2022_phase_all_plus_evs"
CONTROLLERS = ("no_control", "rbc", "citylearn_rbc")


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    env = CityLearnRLlibEnv({"schema": DISTRICT, "start_time_step": 3528, "end_time_step": 3575})
    ran = evaluate_controllers(env, tmp_path_factory.mktemp("bound"), controllers=CONTROLLERS, seed=0)
    return env, ran, {obj: oracle_kpis(env, obj, seed=0) for obj in ("cost", "co2")}


def test_the_bound_is_below_every_controller_on_its_objective(two_days):
    _, ran, bound = two_days
    assert bound["cost"]["time_steps"] == ran["rbc"]["time_steps"] == 47
    for name in CONTROLLERS:
        assert bound["cost"]["cost_total"] <= ran[name]["cost_total"] + 1e-6, name
        assert bound["co2"]["carbon_emissions_kg"] <= ran[name]["carbon_emissions_kg"] + 1e-6, name
    assert bound["cost"]["cost_total"] <= bound["co2"]["cost_total"] + 1e-9
    assert bound["co2"]["carbon_emissions_kg"] <= bound["cost"]["carbon_emissions_kg"] + 1e-9
    # not a trivial bound: the RBC is within reach of it (the headroom is a share, not everything)
    assert bound["cost"]["cost_total"] > 0.5 * ran["rbc"]["cost_total"]


def test_the_bound_charges_the_vehicles(two_days):
    _, ran, bound = two_days
    for obj in ("cost", "co2"):
        assert bound[obj]["ev_departure_shortfall_kwh"] <= ran["rbc"]["ev_departure_shortfall_kwh"] + 1e-6
        assert bound[obj]["ev_charged_kwh"] > 0.5 * ran["rbc"]["ev_charged_kwh"]


def test_a_plan_run_in_citylearn_stays_within_the_devices_limits(two_days):
    """A plan made to be run (vehicle losses, a SoC margin) gives in-bounds actions, charges no socket
    without a vehicle, and runs in the simulator with no limit violated and every vehicle's energy
    delivered about as the RBC does; a share of cost outside [0, 1] is refused."""
    env, ran, _ = two_days
    table = DeviceTable.from_env(env.citylearn)
    replay = PlanReplay(env, objective=0.25, seed=0, vehicle_efficiency=0.88, soc_margin=0.03).for_window()
    low, high = table.action_bounds()
    assert replay.actions.shape == (47, table.n_actions)
    assert np.all(replay.actions >= low - 1e-6) and np.all(replay.actions <= high + 1e-6)
    with tempfile.TemporaryDirectory() as out:
        got = evaluate_controllers(env, out, controllers=(), policies={"plan": replay}, seed=0)["plan"]
    assert got["limit_violations"] == 0 and got["violations_charger_no_vehicle"] == 0
    assert got["ev_departure_success_ratio"] >= ran["rbc"]["ev_departure_success_ratio"] - 0.1
    with pytest.raises(ValueError, match="share of cost"):
        plan_episode(env, objective=1.5)
