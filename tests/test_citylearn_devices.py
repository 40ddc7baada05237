"""envs/citylearn/devices.py: the device table, the devices' state read from a raw observation vector, and
the rule-based controller on that state (what a bundle runs) against the simulator's own state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.citylearn.baselines import make_baseline
from envs.citylearn.devices import DeviceTable, rbc_action, state_from_env
from envs.citylearn.env import CityLearnRLlibEnv
from tests.test_citylearn_domain import shared_2022_schema


@pytest.fixture(scope="module")
def mall3(tmp_path_factory) -> Path:
    """Three days: every socket hosts a vehicle at least once (two days leave one unused)."""
    from envs.citylearn.schema import build_schema
    from envs.citylearn.site import load_site

    out = tmp_path_factory.mktemp("mall3")
    build_schema(load_site(), out, days=3, seed=0)
    return out / "schema.json"


@pytest.mark.parametrize("where", ["mall", "district_2022"])
def test_raw_observation_state_and_rbc_equal_the_simulators(where, request):
    schema = str(request.getfixturevalue("mall3")) if where == "mall" else str(shared_2022_schema())
    env = CityLearnRLlibEnv({"schema": schema, "end_time_step": 71 if where == "mall" else 47})
    table = DeviceTable.from_env(env.citylearn)
    assert table.missing_for_raw_state() == []
    assert DeviceTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table  # survives a manifest
    low, high = table.action_bounds()
    if where == "mall":
        assert table.n_actions == 129 and low[0] == -1 and np.all(low[1:] == 0)  # no V2G at the mall
        assert {c.vehicle_capacity_kwh for c in table.chargers} == {3.0, 7.2}  # one vehicle per socket
    rbc = make_baseline("rbc", env)
    obs, _ = env.reset(seed=0)
    done, plugged = False, 0
    while not done:
        raw = np.asarray(env.citylearn.observations[0], dtype=np.float64)
        from_raw, from_sim = table.state_from_raw(raw), state_from_env(env.citylearn, table)
        np.testing.assert_allclose(from_raw.load, from_sim.load, rtol=1e-6)
        np.testing.assert_allclose(from_raw.pv, from_sim.pv, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(from_raw.ev[:, 0], from_sim.ev[:, 0])
        on = from_sim.ev[:, 0] > 0
        plugged += int(on.sum())
        np.testing.assert_allclose(from_raw.ev[on], from_sim.ev[on], rtol=1e-6, atol=1e-6)
        action = rbc(obs)
        np.testing.assert_array_equal(rbc_action(table, from_raw), action)
        assert np.all(action >= low) and np.all(action <= high)
        obs, _, done, _, _ = env.step(action)
    assert plugged > 20  # vehicles were plugged: the comparison covered them
