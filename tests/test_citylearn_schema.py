"""Any schema a user brings (envs/citylearn/prepare.py, ``gridrl citylearn evaluate``): the schema's own
reward is replaced by ours, legacy entries CityLearn 3.0.2 cannot load are dropped with a warning naming
them, and what cannot run gets one clear error naming the schema entry, never a KeyError traceback. Real
CityLearn on variants of the 2022 district written beside the test (their data files stay in ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.citylearn.env import CityLearnRLlibEnv
from envs.citylearn.prepare import SchemaWarning, prepare_schema
from envs.citylearn.reward import MultiObjectiveReward
from envs.config import ConfigError
from tests.test_citylearn_domain import shared_2022_schema


def variant(tmp_path: Path, name: str, edit) -> Path:
    """The 2022 district's schema.json edited by ``edit(schema)``, in its own folder (data in ../shared)."""
    src = shared_2022_schema()
    schema = json.loads(src.read_text())
    schema["root_directory"] = str(src.parent)
    edit(schema)
    out = tmp_path / name
    out.mkdir()
    (out / "schema.json").write_text(json.dumps(schema))
    return out / "schema.json"


def with_their_reward(s: dict) -> None:
    s["reward_function"] = {
        "type": "citylearn.reward_function.V2GPenaltyReward",
        "attributes": {"peak_percentage_threshold": 0.1, "ev_soc_penalty": 2.0},
    }


def with_washing_machines(s: dict) -> None:
    """The washing-machine entries of the original 2022 EV schema (CityLearn commit b8bad31)."""
    s["observations"]["washing_machine_start_time_step"] = {"active": True, "shared_in_central_agent": True}
    s["observations"]["washing_machine_end_time_step"] = {"active": True, "shared_in_central_agent": True}
    s["actions"]["washing_machine"] = {"active": True}
    s["buildings"]["Building_1"]["washing_machines"] = {
        "Washing_Machine_1": {
            "type": "citylearn.energy_model.WashingMachine",
            "autosize": False,
            "washing_machine_energy_simulation": "Washing_Machine_1.csv",
        }
    }


def test_their_reward_block_is_replaced_by_ours_without_error(tmp_path):
    path = variant(tmp_path, "v2g_reward", with_their_reward)
    with pytest.warns(
        SchemaWarning, match=r"reward_function: citylearn.reward_function.V2GPenaltyReward replaced"
    ):
        env = CityLearnRLlibEnv({"schema": str(path), "end_time_step": 23, "reward_kwargs": {"co2": 0.7}})
    reward = env.citylearn.reward_function
    assert isinstance(reward, MultiObjectiveReward) and reward.config.co2 == 0.7  # ours, with our settings
    env.reset(seed=0)
    _, r, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
    assert np.isfinite(r) and r <= 0


def test_legacy_washing_machines_are_dropped_with_a_warning_naming_them(tmp_path):
    path = variant(tmp_path, "washing", with_washing_machines)
    with pytest.warns(SchemaWarning) as caught:
        env = CityLearnRLlibEnv({"schema": str(path), "end_time_step": 23})
    text = "\n".join(str(w.message) for w in caught)
    for entry in (
        "observations.washing_machine_start_time_step",
        "actions.washing_machine",
        "buildings.Building_1.washing_machines",
    ):
        assert entry in text
    assert env.observation_space.shape == (151,) and env.action_space.shape == (25,)  # as without them


@pytest.mark.parametrize(
    ("edit", "entry"),
    [
        (
            lambda s: s["observations"].update(foo_level={"active": True, "shared_in_central_agent": False}),
            "observations.foo_level",
        ),
        (
            lambda s: s["buildings"]["Building_3"]["pv"].update(autosize=True),
            "buildings.Building_3.pv.autosize",
        ),
        (
            lambda s: s["buildings"]["Building_2"].update(energy_simulation="Building_99.csv"),
            "buildings.Building_2.energy_simulation",
        ),
        (
            lambda s: s["buildings"]["Building_1"]["chargers"]["charger_1_1"].update(
                charger_simulation="nope.csv"
            ),
            "buildings.Building_1.chargers.charger_1_1.charger_simulation",
        ),
        (lambda s: s.pop("simulation_end_time_step"), "simulation_end_time_step"),
    ],
    ids=["unknown_observation", "autosize", "missing_building_file", "missing_charger_file", "missing_key"],
)
def test_what_cannot_load_is_a_clear_error_naming_the_entry(tmp_path, edit, entry):
    path = variant(tmp_path, "bad", edit)
    with pytest.raises(ConfigError) as err:
        CityLearnRLlibEnv({"schema": str(path), "end_time_step": 23})
    assert str(path) in str(err.value) and f"field '{entry}'" in str(err.value)
    assert not isinstance(err.value.__cause__, KeyError) or "CityLearn 3.0.2 cannot load" in str(err.value)


def test_prepare_keeps_our_own_reward_attributes(tmp_path):
    path = variant(
        tmp_path,
        "ours",
        lambda s: s.update(
            reward_function={
                "type": "envs.citylearn.reward.MultiObjectiveReward",
                "attributes": {"ev_constraint": 4.0, "co2": 0.6},
            }
        ),
    )
    block = prepare_schema(path, {"co2": 0.8})["reward_function"]
    assert block["attributes"] == {"ev_constraint": 4.0, "co2": 0.8}


def test_cli_evaluates_any_schema_and_refuses_a_bad_one_in_one_line(tmp_path, capsys):
    from scripts.cli import main

    both = variant(tmp_path, "both", lambda s: (with_their_reward(s), with_washing_machines(s)))
    out = tmp_path / "eval"
    code = main(
        [
            "citylearn",
            "evaluate",
            "--schema",
            str(both),
            "--out",
            str(out),
            "--days",
            "1",
            "--controllers",
            "rbc,zero",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "buildings.Building_1.washing_machines" in err and "reward_function" in err
    kpis = json.loads((out / "kpis.json").read_text())
    assert kpis["rbc"]["ev_departure_success_ratio"] > kpis["zero"]["ev_departure_success_ratio"]
    bad = variant(tmp_path, "bad", lambda s: s["observations"].update(foo_level={"active": True}))
    assert (
        main(["citylearn", "evaluate", "--schema", str(bad), "--out", str(tmp_path / "e2"), "--days", "1"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gridrl citylearn: error: ") and "observations.foo_level" in err[-1]
    assert not any("Traceback" in line for line in err)
