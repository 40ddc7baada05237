"""Any schema a user brings (envs/citylearn/prepare.py, ``gridrl citylearn evaluate``): the schema's own
reward is replaced by ours, legacy entries CityLearn 3.0.2 cannot load are dropped with a warning naming
them, and what cannot run gets one clear error naming the schema entry, never a KeyError traceback. Real
CityLearn on variants of the 2022 district written beside the test (their data files stay in ../shared)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from envs.citylearn.env import CityLearnRLlibEnv
from envs.citylearn.prepare import REWARD_CLASS, SchemaWarning, prepare_schema
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


def with_a_reward_we_cannot_import(s: dict) -> None:
    s["reward_function"] = {"type": "their_package.rewards.Mine", "attributes": {"alpha": 3, "beta": [1, 2]}}


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (with_their_reward, "citylearn.reward_function.V2GPenaltyReward replaced"),
        (with_a_reward_we_cannot_import, r"their_package.rewards.Mine replaced .*\['alpha', 'beta'\]"),
    ],
    ids=["v2g_penalty", "not_importable"],
)
def test_their_reward_block_is_replaced_by_ours_without_error(tmp_path, edit, said):
    path = variant(tmp_path, "their_reward", edit)
    with pytest.warns(SchemaWarning, match=f"reward_function: {said}"):
        env = CityLearnRLlibEnv({"schema": str(path), "end_time_step": 23, "reward_kwargs": {"co2": 0.7}})
    reward = env.citylearn.reward_function
    assert isinstance(reward, MultiObjectiveReward) and reward.config.co2 == 0.7  # ours, with our settings
    env.reset(seed=0)
    _, r, *_ = env.step(np.zeros(env.action_space.shape, np.float32))
    assert np.isfinite(r) and r <= 0


@pytest.mark.parametrize(
    ("block", "said"),
    [
        (
            {"type": {"Building_1": "citylearn.reward_function.SolarPenaltyReward"}, "attributes": {}},
            "a per-building mapping of reward classes replaced",
        ),
        ({"attributes": {"alpha": 3}}, r"a block without a reward class replaced .*\['alpha'\]"),
        ("citylearn.reward_function.RewardFunction", "'citylearn.reward_function.RewardFunction' replaced"),
    ],
    ids=["per_building", "no_type", "a_string"],
)
def test_any_reward_block_of_theirs_is_replaced_with_a_warning(tmp_path, block, said):
    path = variant(tmp_path, "theirs", lambda s: s.update(reward_function=block))
    with pytest.warns(SchemaWarning, match=f"reward_function: {said}"):
        prepared = prepare_schema(path, {"ev": 0.2})
    assert prepared["reward_function"] == {"type": REWARD_CLASS, "attributes": {"ev": 0.2}}


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
        (lambda s: s.update(seconds_per_time_step="hour"), "seconds_per_time_step"),
        (lambda s: s.update(simulation_start_time_step=40), "simulation_end_time_step"),  # [40, 23]
        (lambda s: s["observations"].update(month=True), "observations.month"),
        (lambda s: [b.update(include=False) for b in s["buildings"].values()], "buildings"),
        (lambda s: s["buildings"]["Building_1"].pop("weather"), "buildings.Building_1.weather"),
        (
            lambda s: s["buildings"]["Building_1"].update(type="citylearn.building.NoSuchBuilding"),
            "buildings.Building_1.type",
        ),
        (
            lambda s: s["buildings"]["Building_1"]["electrical_storage"].update(type="their_pkg.Battery"),
            "buildings.Building_1.electrical_storage.type",
        ),
        (
            lambda s: s["buildings"]["Building_1"]["chargers"]["charger_1_1"].pop("type"),
            "buildings.Building_1.chargers.charger_1_1.type",
        ),
        (
            lambda s: s["electric_vehicles_def"]["Electric_Vehicle_1"].pop("battery"),
            "electric_vehicles_def.Electric_Vehicle_1.battery",
        ),
        (
            lambda s: s["buildings"]["Building_1"].update(
                dynamics={"type": "citylearn.dynamics.LSTMDynamics", "attributes": {"filename": "no.pth"}}
            ),
            "buildings.Building_1.dynamics.attributes.filename",
        ),
        (
            lambda s: s["buildings"]["Building_1"].update(
                power_outage={"stochastic_power_outage_model": {"type": "their_pkg.Outages"}}
            ),
            "buildings.Building_1.power_outage.stochastic_power_outage_model.type",
        ),
        # what only CityLearn itself finds, while it builds the env
        (
            lambda s: s["buildings"]["Building_1"]["electrical_storage"]["attributes"].update(colour="red"),
            "buildings.Building_1.electrical_storage.attributes.colour",
        ),
        (
            lambda s: s["buildings"]["Building_1"]["electrical_storage"]["attributes"].update(capacity="big"),
            "buildings.Building_1.electrical_storage",
        ),
        (lambda s: s["actions"].update(foo_storage={"active": True}), "actions.foo_storage"),
    ],
    ids=[
        "unknown_observation",
        "autosize",
        "missing_building_file",
        "missing_charger_file",
        "missing_key",
        "seconds_not_a_number",
        "window_ends_before_it_starts",
        "observation_not_a_mapping",
        "no_building_included",
        "no_weather",
        "building_class_unknown",
        "device_module_unknown",
        "charger_without_type",
        "vehicle_without_battery",
        "dynamics_model_missing",
        "outage_model_unknown",
        "attribute_unknown",
        "attribute_wrong_type",
        "unknown_action",
    ],
)
def test_what_cannot_load_is_a_clear_error_naming_the_entry(tmp_path, edit, entry):
    path = variant(tmp_path, "bad", edit)
    with pytest.raises(ConfigError) as err:
        CityLearnRLlibEnv({"schema": str(path), "end_time_step": 23})
    assert str(path) in str(err.value) and f"field '{entry}'" in str(err.value)
    assert not isinstance(err.value.__cause__, KeyError) or "CityLearn 3.0.2 cannot load" in str(err.value)


def _with_file(tmp_path: Path, name: str, edit_rows) -> str:
    """A copy of one of the district's CSVs, edited by ``edit_rows(DataFrame)``, in ``tmp_path``."""
    import pandas as pd

    out = tmp_path / f"edited_{name}"
    edit_rows(pd.read_csv(shared_2022_schema().parent / name)).to_csv(out, index=False)
    return str(out)


@pytest.mark.parametrize(
    ("where", "name", "edit_rows", "said"),
    [
        (("Building_2", "energy_simulation"), "Building_2.csv",
         lambda d: d.drop(columns=["non_shiftable_load"]), r"has no column\(s\) \['non_shiftable_load'\]"),
        (("Building_2", "energy_simulation"), "Building_2.csv", lambda d: d.assign(colour=1),
         r"column\(s\) \['colour'\] that CityLearn 3.0.2 does not take"),
        (("Building_2", "pricing"), "pricing.csv", lambda d: d.iloc[:10],
         r"has 10 data rows; the simulated steps \[0, 23\] need 24"),
        (("Building_1", "chargers", "charger_1_1", "charger_simulation"), "charger_1_1.csv",
         lambda d: d.drop(columns=["electric_vehicle_id"]), r"no column\(s\) \['electric_vehicle_id'\]"),
    ],
    ids=["building_column_missing", "building_column_unknown", "too_few_rows", "charger_column_missing"],
)  # fmt: skip
def test_a_time_series_citylearn_cannot_use_is_named(tmp_path, where, name, edit_rows, said):
    def edit(s: dict) -> None:
        node = s["buildings"]
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = _with_file(tmp_path, name, edit_rows)

    path = variant(tmp_path, "series", edit)
    with pytest.raises(ConfigError, match=said) as err:
        CityLearnRLlibEnv({"schema": str(path), "end_time_step": 23})
    assert f"field 'buildings.{'.'.join(where)}'" in str(err.value)


def test_the_window_is_checked_against_the_data_it_simulates():
    schema = str(shared_2022_schema())  # 8,760 rows: steps 0..8759
    with pytest.raises(ConfigError, match=r"Building_1.energy_simulation'.*8760 data rows.*\[8750, 8770\]"):
        CityLearnRLlibEnv({"schema": schema, "start_time_step": 8750, "end_time_step": 8770})
    assert prepare_schema(schema, start_time_step=8740, end_time_step=8759)["buildings"]  # the last 20 steps


def test_train_takes_any_schema_and_refuses_a_bad_one_before_ray_starts(tmp_path, capsys):
    from scripts.citylearn import add_parser, train_spec
    from scripts.cli import main

    both = variant(tmp_path, "both", lambda s: (with_their_reward(s), with_washing_machines(s)))
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["citylearn", "train", "--schema", str(both), "--end-step", "95", "--episode-steps", "24",
         "--holdout-weeks", "none"]
    )  # fmt: skip
    spec = train_spec(args)
    env_config = spec.algo_config.env_config
    assert env_config["schema"] == str(both) and env_config["end_time_step"] == 95
    env = CityLearnRLlibEnv(env_config)
    assert isinstance(env.citylearn.reward_function, MultiObjectiveReward) and len(env.windows) == 4
    bad = variant(tmp_path, "bad", lambda s: s["buildings"]["Building_4"]["pv"].update(type="their.PV"))
    assert main(["citylearn", "train", "--schema", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gridrl citylearn: error: ") and "buildings.Building_4.pv.type" in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--end-step", "100"], "'episode_time_steps': 168 steps do not fit in the simulation [0, 100]"),
        (["--end-step", "400", "--episode-steps", "24"], "hold out weeks 0-1 of this simulation, or none"),
    ],
    ids=["episode_longer_than_the_schema", "held_out_week_past_its_end"],
)
def test_train_on_a_short_schema_says_which_setting_to_change(capsys, extra, said):
    from scripts.cli import main

    assert main(["citylearn", "train", "--schema", str(shared_2022_schema()), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gridrl citylearn: error: ") and said in err[-1], err[-1]


def test_sessions_of_an_undefined_vehicle_are_named_not_skipped_silently(tmp_path):
    path = variant(tmp_path, "no_ev7", lambda s: s["electric_vehicles_def"].pop("Electric_Vehicle_7"))
    with pytest.warns(SchemaWarning) as caught:
        prepare_schema(path)
    said = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(said) == 1 and "buildings.Building_1.chargers.charger_1_1.charger_simulation" in said[0]
    assert "['Electric_Vehicle_7']" in said[0]


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
