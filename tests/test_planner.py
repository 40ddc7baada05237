"""envs/planner.py: the LP lower bound sits between the relaxed oracle and every real controller.

On a small-tank variant of the default site (so that one hour fills the tanks and the energy limits bind),
one hour of broken clouds: the LP's least export is <= the PI's and >= the relaxed oracle's minus the
aggregation tolerance (the LP checks tank levels only at the ends of its 60 s steps); with the import
capped at the PI's, it is still <= the PI's export; its wasted energy is <= the PI's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from envs.controllers import PIController
from envs.export_env import ExportControlEnv, ExportEnvConfig
from envs.metrics import metrics_of_record
from envs.oracle import OracleController
from envs.planner import PlanController, day_arrays, lower_bound
from envs.rollout import rollout
from envs.site import DEFAULT_SITE_PATH

SEED = 3


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory) -> ExportEnvConfig:
    data = yaml.safe_load(DEFAULT_SITE_PATH.read_text())
    for sl in data["slaves"]:
        if sl["kind"] == "water_heater":
            sl.update(tank_kwh=0.6)
        elif sl["kind"] == "heat_pump":
            sl.update(tank_kwh=0.5)
        else:
            sl.update(energy_kwh=[1.0, 2.0])
    path = Path(tmp_path_factory.mktemp("planner")) / "small_tanks.yaml"
    path.write_text(yaml.safe_dump(data))
    return ExportEnvConfig(site=str(path), scenario="broken_clouds", episode_s=3600, start_s=11 * 3600)


@pytest.fixture(scope="module")
def runs(small_cfg):
    env = ExportControlEnv(small_cfg)
    env.reset(seed=SEED)
    day = day_arrays(env.sim)
    pi = metrics_of_record(rollout(PIController(), small_cfg, seed=SEED).frame)
    oracle = metrics_of_record(rollout(OracleController(), small_cfg, seed=SEED).frame)
    return day, pi, oracle


def test_lower_bound_between_oracle_and_pi(runs):
    day, pi, oracle = runs
    lb = lower_bound(day)
    assert lb.status == "optimal", lb.status
    assert oracle["export_kwh"] > 0.3, oracle  # the tanks fill: a bound of 0 would not pass below
    assert lb.export_kwh <= pi["export_kwh"], (lb, pi)
    assert lb.export_kwh >= oracle["export_kwh"] - 0.02 - 0.02 * oracle["export_kwh"], (lb, oracle)
    capped = lower_bound(day, import_cap_kwh=pi["controlled_import_kwh"])
    assert lb.export_kwh - 1e-9 <= capped.export_kwh <= pi["export_kwh"], (capped, pi)
    assert capped.import_kwh <= pi["controlled_import_kwh"] + 1e-6, capped
    wasted = lower_bound(day, objective="wasted")
    assert wasted.wasted_kwh <= pi["export_kwh"] + pi["controlled_import_kwh"], (wasted, pi)


def test_executed_plan_is_achievable_and_above_the_bound(small_cfg, runs):
    """The plan, executed on the real devices, can never beat the LP bound; with foresight and a perfect
    link it wastes no more energy than the PI on this hour."""
    day, pi, _ = runs
    ctl = PlanController(time_limit=30.0)
    plan = metrics_of_record(rollout(ctl, small_cfg, seed=SEED).frame)
    assert ctl.plan.result.status == "optimal", ctl.plan.result
    lb = lower_bound(day)
    wasted = lower_bound(day, objective="wasted")
    assert plan["export_kwh"] >= lb.export_kwh - 1e-6, (plan, lb)
    assert plan["export_kwh"] + plan["controlled_import_kwh"] >= wasted.wasted_kwh - 1e-6, (plan, wasted)
    plan_wasted = plan["export_kwh"] + plan["controlled_import_kwh"]
    assert plan_wasted <= pi["export_kwh"] + pi["controlled_import_kwh"], (plan, pi)


def test_continuous_first_pi_spreads_the_pis_total_water_heater_first():
    """The benchmarks' causal comparator: same total as the PI, the water heater's phase served first."""
    import numpy as np

    from envs.controllers import ContinuousFirstPI, PIController
    from envs.site import load_site
    from envs.state_spec import FEAT, N_FEATURES

    rule = ContinuousFirstPI.for_site(load_site())
    assert tuple(rule.continuous_w) == (3000.0, 0.0, 0.0)  # the default site's water heater on L1
    rng = np.random.default_rng(0)
    obs = rng.normal(0.0, 800.0, (64, N_FEATURES))
    obs[:, FEAT["export_error_w"]] = rng.uniform(0.0, 4000.0, 64)
    for p in (1, 2, 3):
        obs[:, FEAT[f"available_w_l{p}"]] = rng.choice([0.0, 1800.0, 3000.0, 7360.0], 64)
    pi, ours = PIController().act(obs), rule.act(obs)
    np.testing.assert_allclose(ours.sum(-1), pi.sum(-1), atol=1e-6)
    l1 = np.minimum(obs[:, FEAT["available_w_l1"]], 3000.0)
    np.testing.assert_allclose(ours[:, 0], np.minimum(pi.sum(-1), l1), atol=1e-6)
    assert (ours[:, 0] > pi[:, 0] + 1.0).any(), "the PI must spread some of it elsewhere"
