"""CityLearn domain: site YAML, schema builder, reward, env, baselines, KPIs and the CLI (no Ray).

Real CityLearn 3.0.2 throughout (no mock). Schemas: the mall built here for a few days, and the 2022
challenge district with EVs staged in ``<repo>/../shared/citylearn`` (or $CITYLEARN_LOCAL_DATASETS_PATH).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from envs.citylearn import profiles
from envs.citylearn.baselines import BASELINES, make_baseline
from envs.citylearn.env import CityLearnRLlibEnv, resolve_schema
from envs.citylearn.evaluate import evaluate_controllers, run_episode
from envs.citylearn.kpis import energy_kpis
from envs.citylearn.schema import build_schema
from envs.citylearn.site import DEFAULT_MALL_SITE_PATH, load_site
from envs.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
DATASET_2022 = "citylearn_challenge_2022_phase_all_plus_evs"


def shared_2022_schema() -> Path:
    roots = [p for p in os.environ.get("CITYLEARN_LOCAL_DATASETS_PATH", "").split(os.pathsep) if p]
    roots.append(str(Path(os.environ.get("GRIDRL_SHARED", REPO / ".." / "shared")) / "citylearn"))
    for root in roots:
        p = Path(root) / DATASET_2022 / "schema.json"
        if p.is_file():
            return p.resolve()
    raise AssertionError(
        f"2022 challenge schema not found under {roots}: stage ../shared/citylearn beside the repo"
    )


@pytest.fixture(scope="module")
def site():
    return load_site()


@pytest.fixture(scope="module")
def mall3(tmp_path_factory, site) -> Path:
    """The mall for 3 days (72 hourly steps), seed 0."""
    out = tmp_path_factory.mktemp("mall3")
    build_schema(site, out, days=3, seed=0)
    return out / "schema.json"


# --- site and schema --------------------------------------------------------------------------------------


def test_site_yaml_has_the_seed_figures(site):
    assert site.pv.kwp == 4162.0
    assert (site.battery.capacity_kwh, site.battery.power_kw) == (4520.0, 2712.0)
    assert site.load.annual_kwh == 3_358_876.0 and site.ev.annual_demand_kwh == 232_341.0
    assert len(site.socket_ids) == 128 and site.ev.chargers == 32 and site.ev.sockets_per_charger == 4
    assert {c.name: c.sockets for c in site.ev.classes} == {"motorbike": 112, "mototaxi": 16}
    assert site.grid.carbon_intensity_kg_per_kwh == 0.4521
    assert site.socket_ids[0] == "charger_01_1" and site.socket_ids[-1] == "charger_32_4"


def test_site_yaml_error_names_file_and_field(tmp_path):
    text = DEFAULT_MALL_SITE_PATH.read_text().replace("capacity_kwh: 4520.0", "capacity_kwh: -1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_site(bad)
    assert str(bad) in str(err.value) and "battery.capacity_kwh" in str(err.value)
    bad.write_text(DEFAULT_MALL_SITE_PATH.read_text().replace("  kwp: 4162.0", "  kwp: 4162.0\n  tilt: 5"))
    with pytest.raises(ConfigError, match="pv.tilt"):
        load_site(bad)


def test_year_profiles_reproduce_the_annual_figures(site):
    rng = np.random.default_rng(0)
    cal = profiles.make_calendar(site, site.calendar.days + 1)
    wx = profiles.weather_and_pv(site, cal, rng)
    load = profiles.mall_load(site, cal, wx["temperature_c"], rng)
    sessions = profiles.ev_sessions(site, cal, rng)
    year = 365 * 24
    assert year == 8760
    assert load[:year].sum() == pytest.approx(3_358_876.0, abs=1e-3)
    assert profiles.session_demand_kwh(site, sessions, 0, year) == pytest.approx(232_341.0, abs=1e-3)
    yield_kwh_per_kwp = wx["pv_w_per_kw"][:year].sum() / 1000.0
    assert 1100 < yield_kwh_per_kwp < 1500  # tropical PV, about 4.7 kWh/m2/day
    pv_kwh = wx["pv_w_per_kw"][:year] * site.pv.kwp / 1000.0
    assert (pv_kwh > load[:year]).sum() > 3000  # many hours of net export
    # sessions stay inside their class's hours and every target is reachable
    for s in sessions[:2000]:
        vc = site.socket_classes[s.socket]
        assert vc.hours[0] <= s.start % 24 and (s.end - 1) % 24 < vc.hours[1] and s.start < s.end
        assert site.ev.min_arrival_soc - 1e-9 <= s.arrival_soc <= s.required_soc <= 1.0


def test_schema_files_and_a_few_days_slice_the_year(mall3, site):
    schema = json.loads(mall3.read_text())
    b = schema["buildings"][site.name]
    assert b["pv"]["autosize"] is False and b["electrical_storage"]["autosize"] is False
    assert b["pv"]["attributes"]["nominal_power"] == 4162.0
    assert b["electrical_storage"]["attributes"]["capacity"] == 4520.0
    assert b["electrical_storage"]["attributes"]["nominal_power"] == 2712.0
    assert len(b["chargers"]) == 128 and len(schema["electric_vehicles_def"]) == 128
    assert schema["simulation_end_time_step"] == 71
    summary = json.loads((mall3.parent / "summary.json").read_text())
    assert summary["time_steps"] == 72 and summary["sockets"] == 128
    # a few-day schema is exactly the start of the year
    rng = np.random.default_rng(0)
    cal = profiles.make_calendar(site, site.calendar.days + 1)
    wx = profiles.weather_and_pv(site, cal, rng)
    load = profiles.mall_load(site, cal, wx["temperature_c"], rng)
    import pandas as pd

    written = pd.read_csv(mall3.parent / f"{site.name}.csv")
    np.testing.assert_allclose(written["non_shiftable_load"], load[:72], rtol=1e-5)
    assert summary["mall_load_kwh"] == pytest.approx(load[:72].sum(), rel=1e-6)


def test_schema_is_a_function_of_the_seed(tmp_path, site):
    def build(seed: int, name: str) -> tuple[bytes, bytes]:
        build_schema(site, tmp_path / name, days=1, seed=seed)
        folder = tmp_path / name
        return (folder / "schema.json").read_bytes(), (folder / "chargers" / "charger_30_2.csv").read_bytes()

    assert build(5, "a") == build(5, "b")
    assert build(6, "c")[1] != build(5, "a")[1]


def test_mall_schema_builds_a_citylearn_env_that_steps(mall3):
    from citylearn.citylearn import CityLearnEnv

    env = CityLearnEnv(str(mall3), central_agent=True)
    obs, _ = env.reset()
    assert env.action_space[0].shape == (129,)
    a = np.zeros(129, dtype=np.float32)
    a[1:] = 1.0  # charge every plugged vehicle
    for _ in range(14):
        obs, reward, terminated, truncated, _ = env.step([a])
    assert np.all(np.isfinite(obs[0])) and np.isfinite(reward[0]) and not terminated
    building = env.buildings[0]
    assert building.chargers_electricity_consumption[:14].sum() > 0  # vehicles were plugged and charged
    assert (-building.solar_generation[:14]).max() > 500  # PV is producing by 13:00


def test_shared_2022_ev_schema_builds_and_steps():
    from citylearn.citylearn import CityLearnEnv

    env = CityLearnEnv(str(shared_2022_schema()), central_agent=True, simulation_end_time_step=23)
    obs, _ = env.reset()
    assert len(env.buildings) == 17 and env.action_space[0].shape == (25,)
    steps = 0
    terminated = False
    while not terminated:
        obs, reward, terminated, _, _ = env.step([env.action_space[0].sample()])
        steps += 1
    assert steps == 23 and np.all(np.isfinite(obs[0])) and np.isfinite(reward[0])


def test_residual_per_kind_gives_every_battery_one_correction_and_every_charger_another():
    config = {"schema": str(shared_2022_schema()), "end_time_step": 23, "action_mode": "rbc_residual",
              "residual_scale": 0.5}  # fmt: skip
    per_device = CityLearnRLlibEnv(config)
    env = CityLearnRLlibEnv({**config, "residual_per": "kind"})
    assert env.action_space.shape == (2,) and per_device.action_space.shape == (25,)
    batteries = [b.battery.slot for b in env.devices.buildings if b.battery is not None]
    chargers = [c.slot for c in env.devices.chargers]
    assert sorted(batteries + chargers) == list(range(25)) and chargers
    env.reset(seed=0)
    per_device.reset(seed=0)
    spread = np.zeros(25, dtype=np.float32)
    spread[batteries], spread[chargers] = 0.4, -0.6
    for _ in range(6):  # the same CityLearn action as the per-device correction it stands for
        a = env.to_citylearn(np.array([0.4, -0.6], dtype=np.float32))
        np.testing.assert_array_equal(a, per_device.to_citylearn(spread))
        env.step(np.array([0.4, -0.6], dtype=np.float32))
        per_device.step(spread)
    zero = env.to_citylearn(np.zeros(2, dtype=np.float32))
    np.testing.assert_allclose(zero, make_baseline("rbc", env)(None), atol=1e-6)  # zero: the RBC


# --- env --------------------------------------------------------------------------------------------------


def test_fast_normalisation_equals_citylearns_wrapper(mall3):
    for schema, end in ((str(mall3), 40), (str(shared_2022_schema()), 40)):
        ours = CityLearnRLlibEnv({"schema": schema, "end_time_step": end})
        ref = CityLearnRLlibEnv({"schema": schema, "end_time_step": end, "observations": "citylearn"})
        assert ours.observation_names == ref.observation_names
        o1, _ = ours.reset(seed=3)
        o2, _ = ref.reset(seed=3)
        rng = np.random.default_rng(0)
        for _ in range(12):
            a = rng.uniform(-1, 1, ours.action_space.shape).astype(np.float32)
            o1, r1, *_ = ours.step(a)
            o2, r2, *_ = ref.step(a)
            np.testing.assert_allclose(o1, o2, atol=1e-6)
            assert r1 == r2
            assert ours.observation_space.contains(o1)


def test_env_passes_gymnasium_checker_and_is_deterministic():
    from gymnasium.utils.env_checker import check_env

    config = {"schema": str(shared_2022_schema()), "end_time_step": 60}
    env = CityLearnRLlibEnv(config)
    check_env(env, skip_render_check=True)

    def rollout(seed: int) -> tuple[np.ndarray, np.ndarray]:
        e = CityLearnRLlibEnv(config)
        obs, _ = e.reset(seed=seed)
        rng = np.random.default_rng(seed)
        out, rew = [obs], []
        for _ in range(50):
            obs, r, *_ = e.step(rng.uniform(-1, 1, e.action_space.shape).astype(np.float32))
            out.append(obs)
            rew.append(r)
        return np.stack(out), np.array(rew)

    (o1, r1), (o2, r2) = rollout(7), rollout(7)
    assert o1.tobytes() == o2.tobytes() and r1.tobytes() == r2.tobytes()


def test_registered_with_gymnasium_and_rllib():
    import gymnasium as gym
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from envs.citylearn.env import ENV_NAME, GYM_ID, register

    register()
    assert _global_registry.contains(ENV_CREATOR, ENV_NAME)
    env = gym.make(GYM_ID, config={"schema": str(shared_2022_schema()), "end_time_step": 5})
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs) and env.action_space.shape == (25,)
    env.close()


def test_env_config_is_typed_at_the_boundary(mall3):
    with pytest.raises(ConfigError, match="env_config: field 'episode_lenght'"):
        CityLearnRLlibEnv({"schema": str(mall3), "episode_lenght": 24})
    with pytest.raises(ConfigError, match="observations"):
        CityLearnRLlibEnv({"schema": str(mall3), "observations": "whitened"})
    with pytest.raises(ConfigError, match="reward_function.attributes: field 'co2'"):
        CityLearnRLlibEnv({"schema": str(mall3), "reward_kwargs": {"co2": "high"}})
    with pytest.raises(ConfigError, match="no schema.json found"):
        resolve_schema(mall3.parent / "missing")


def test_env_reward_weights_and_info_terms(mall3):
    env = CityLearnRLlibEnv(
        {"schema": str(mall3), "end_time_step": 30, "reward_kwargs": {"co2": 1.0, "solar": 0.0}}
    )
    env.reset()
    w = env.citylearn.reward_function.config
    assert (w.co2, w.solar, w.cost) == (1.0, 0.0, 0.15)
    assert w.energy_scale_kwh > 600  # from the schema: peak load + every socket at full power
    for _ in range(14):
        _, r, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
    t = info["reward_terms"]
    k = 10.0 * (1.0 + 0.15 + 0.05) / w.energy_scale_kwh  # the EV constraint's price of a missing kWh
    assert r == pytest.approx(
        -(1.0 * t["co2"] + 0.15 * t["cost"] + 0.1 * t["ev"] + 0.05 * t["peak"] + k * t["ev_shortfall_kwh"])
    )
    assert t["ev_shortfall_kwh"] > 0  # no charging at all: vehicles leave short
    assert t["solar"] > 0  # 13:00-14:00 at an idle battery: PV is exported


def test_episode_windows_come_from_the_config():
    env = CityLearnRLlibEnv({"schema": str(shared_2022_schema()), "start_time_step": 48, "end_time_step": 95,
                             "episode_time_steps": 24, "random_episode_split": True})  # fmt: skip
    starts = set()
    for seed in range(6):
        env.reset(seed=seed)
        starts.add(env.citylearn.episode_tracker.episode_start_time_step)
        steps, done = 0, False
        while not done:
            _, _, done, _, _ = env.step(np.zeros(env.action_space.shape, np.float32))
            steps += 1
        assert steps == 23
    assert starts <= {48, 72} and len(starts) == 2


# --- baselines and KPIs -----------------------------------------------------------------------------------


def test_energy_kpis_and_seed_co2_accounting():
    series = {
        "net": np.array([10.0, -5.0, 20.0, 0.0]),
        "load": np.array([10.0, 5.0, 20.0, 5.0]),
        "pv": np.array([0.0, 12.0, 0.0, 0.0]),
        "battery": np.array([0.0, 2.0, 0.0, -5.0]),
        "ev": np.array([0.0, 0.0, 0.0, 0.0]),
    }
    k = energy_kpis(series, step_h=1.0, co2_factor=0.5, ev_factor=2.0, steps_per_day=2)
    assert k["grid_import_kwh"] == 30.0 and k["grid_export_kwh"] == 5.0
    assert k["peak_import_kw"] == 20.0 and k["daily_peak_import_mean_kw"] == 15.0
    assert k["ramping_mean_kw"] == pytest.approx((15 + 25 + 20) / 3)
    assert k["co2_emitted_kg"] == 15.0
    assert k["co2_indirect_reduction_kg"] == pytest.approx((12 - 5 + 5) * 0.5)
    assert k["co2_direct_reduction_kg"] == 0.0


def test_baselines_run_a_short_episode_and_produce_kpis(mall3, tmp_path):
    results = evaluate_controllers(
        {"schema": str(mall3)}, tmp_path, controllers=["no_control", "rbc", "zero"], seed=0
    )
    kpis = json.loads((tmp_path / "kpis.json").read_text())
    assert set(kpis) == {"no_control", "rbc", "zero"} and kpis == json.loads(json.dumps(results))
    assert (tmp_path / "dispatch.png").stat().st_size > 10_000
    for name in kpis:
        for key in ("cost_total", "carbon_emissions_kg", "daily_peak_import_mean_kw", "ramping_mean_kw",
                    "ev_departure_success_ratio", "solar_self_consumption_ratio", "co2_emitted_kg",
                    "co2_indirect_reduction_kg", "co2_direct_reduction_kg"):  # fmt: skip
            assert kpis[name][key] is not None and math.isfinite(kpis[name][key]), (name, key)
        assert kpis[name]["co2_emitted_kg"] == pytest.approx(kpis[name]["grid_import_kwh"] * 0.4521)
    nc, rbc, zero = kpis["no_control"], kpis["rbc"], kpis["zero"]
    assert zero["ev_charged_kwh"] == 0 and zero["ev_departure_success_ratio"] < 0.1
    assert nc["ev_departure_success_ratio"] > 0.95 and rbc["ev_departure_success_ratio"] > 0.95
    # the RBC is clearly better than no control where the battery acts
    assert rbc["co2_emitted_kg"] < 0.5 * nc["co2_emitted_kg"]
    assert rbc["cost_total"] < 0.5 * nc["cost_total"]
    assert rbc["solar_self_consumption_ratio"] > nc["solar_self_consumption_ratio"] + 0.1
    assert rbc["episode_return"] > nc["episode_return"]


def test_every_baseline_runs_on_the_2022_district():
    env = CityLearnRLlibEnv({"schema": str(shared_2022_schema()), "end_time_step": 23})
    for name in BASELINES:
        ctrl = make_baseline(name, env)
        ret, steps = run_episode(env, ctrl, seed=0)
        assert steps == 23 and math.isfinite(ret)
    with pytest.raises(ValueError, match="unknown controller 'pi'"):
        make_baseline("pi", env)


def test_cli_build_and_evaluate(tmp_path, capsys):
    from scripts.cli import main

    out = tmp_path / "mall"
    assert main(["citylearn", "build-schema", "--out", str(out), "--days", "2", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["time_steps"] == 48 and summary["seed"] == 1
    ev_dir = tmp_path / "eval"
    code = main(["citylearn", "evaluate", "--schema", str(out), "--out", str(ev_dir), "--days", "1",
                 "--controllers", "no_control,rbc", "--seed", "0"])  # fmt: skip
    assert code == 0
    kpis = json.loads((ev_dir / "kpis.json").read_text())
    assert set(kpis) == {"no_control", "rbc"} and kpis["rbc"]["time_steps"] == 23
    assert (
        main(["citylearn", "evaluate", "--schema", str(out), "--out", str(ev_dir), "--controllers", "pi"])
        == 2
    )
    assert "--controllers" in capsys.readouterr().err


def test_limit_violation_checks_fire_on_a_series_that_breaks_them():
    from envs.citylearn.kpis import limit_violations

    env = CityLearnRLlibEnv({"schema": str(shared_2022_schema()), "end_time_step": 23})
    run_episode(env, make_baseline("no_control", env), seed=0)
    clean = limit_violations(env.citylearn)
    assert clean["limit_violations"] == 0 and clean["ev_departure_shortfall_kwh"] >= 0
    b = env.citylearn.buildings[0]
    b.electrical_storage.soc[3] = 1.2  # above full
    charger = b.electric_vehicle_chargers[0]
    absent = next(t for t, ev in enumerate(charger.past_connected_evs[:23]) if ev is None)
    charger.electricity_consumption[absent] = 2.0  # energy into an empty socket
    broken = limit_violations(env.citylearn)
    assert broken["violations_battery_soc"] == 1 and broken["violations_charger_no_vehicle"] == 1
    assert broken["limit_violations"] == 2


def test_weeks_aggregate_and_targets_can_fail():
    from envs.citylearn.evaluate import aggregate_kpis, target_check

    weeks = [
        {
            "cost_total": 10.0,
            "ev_departure_success_ratio": 1.0,
            "ev_departure_count": 30.0,
            "peak_import_kw": 5.0,
            "ramping_mean_kw": 2.0,
            "time_steps": 167.0,
            "limit_violations": 0.0,
        },
        {
            "cost_total": 20.0,
            "ev_departure_success_ratio": 0.5,
            "ev_departure_count": 10.0,
            "peak_import_kw": 9.0,
            "ramping_mean_kw": 4.0,
            "time_steps": 167.0,
            "limit_violations": 1.0,
        },
    ]
    agg = aggregate_kpis(weeks)
    assert agg["cost_total"] == 30.0 and agg["peak_import_kw"] == 9.0 and agg["episodes"] == 2
    assert agg["ev_departure_success_ratio"] == pytest.approx(35 / 40) and agg["ramping_mean_kw"] == 3.0
    rbc = {
        "cost_total": 100.0,
        "carbon_emissions_kg": 50.0,
        "ev_departure_success_ratio": 0.95,
        "limit_violations": 0,
    }
    good = {
        "cost_total": 94.0,
        "carbon_emissions_kg": 47.0,
        "ev_departure_success_ratio": 0.94,
        "limit_violations": 0,
    }
    assert target_check({"rbc": rbc, "policy": good})["passed"]
    for key, value in (
        ("cost_total", 96.0),
        ("carbon_emissions_kg", 48.0),
        ("ev_departure_success_ratio", 0.9),
        ("limit_violations", 1),
    ):
        check = target_check({"rbc": rbc, "policy": {**good, key: value}})
        assert not check["passed"] and sum(not c["passed"] for c in check["criteria"].values()) == 1
    assert not target_check({"rbc": rbc})["passed"]  # no policy: nothing is met
