"""The export-control simulator: API, determinism, physics invariants, the site file's errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.config import ConfigError
from envs.export_env import ExportControlEnv, ExportControlVectorEnv, ExportEnvConfig
from envs.metrics import metrics_of_record
from envs.rollout import make_controller, rollout
from envs.simulator import EV_APPLIED, EV_DELAY, EV_LOST, EV_SENT, EV_SLAVE
from envs.site import DEFAULT_SITE_PATH, load_site
from envs.state_spec import N_FEATURES

NOON_WINDOW = ExportEnvConfig(scenario="broken_clouds", episode_s=1800, start_s=11 * 3600, record_events=True)


def test_registered_env_passes_check_env():
    env = gym.make(envs.ENV_ID, config={"episode_s": 600})
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (N_FEATURES,) and obs.dtype == np.float32


def test_same_seed_same_rollout_to_the_bit():
    def run(seed):
        env = ExportControlEnv({"episode_s": 120, "scenario": "broken_clouds"})
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(50):
            obs, r, *_ = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            out.append(obs)
            out.append(np.array([r], dtype=np.float32))
        return np.concatenate(out)

    a, b, c = run(7), run(7), run(8)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_same_seed_same_trace_for_a_controller():
    t1 = rollout(make_controller("pi", 7500), NOON_WINDOW, seed=5)
    t2 = rollout(make_controller("pi", 7500), NOON_WINDOW, seed=5)
    assert t1.frame.equals(t2.frame)
    assert np.array_equal(t1.events, t2.events)


@pytest.fixture(scope="module")
def random_trace():
    """The random controller stresses the dispatcher and slaves hardest."""
    return rollout(make_controller("random", 7500, seed=1), NOON_WINDOW, seed=11)


@pytest.fixture(scope="module")
def pi_trace():
    return rollout(make_controller("pi", 7500), NOON_WINDOW, seed=11)


@pytest.mark.parametrize("which", ["random_trace", "pi_trace"])
def test_energy_balances_per_phase_every_step(which, request):
    trace = request.getfixturevalue(which)
    fr = trace.frame
    site = load_site()
    for p in (1, 2, 3):
        lhs = fr[f"pv_w_l{p}"].to_numpy()
        rhs = fr[f"base_w_l{p}"].to_numpy() + fr[f"ctrl_w_l{p}"].to_numpy() + fr[f"export_w_l{p}"].to_numpy()
        np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-6)
        on_phase = [s.id for s in site.slaves if s.phase == p]
        slaves = sum(fr[f"slave_w_{i}"].to_numpy() for i in on_phase) if on_phase else 0.0
        np.testing.assert_allclose(fr[f"ctrl_w_l{p}"].to_numpy(), slaves, rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["random_trace", "pi_trace"])
def test_no_slave_exceeds_its_limits(which, request):
    fr = request.getfixturevalue(which).frame
    for s in load_site().slaves:
        w = fr[f"slave_w_{s.id}"].to_numpy()
        assert w.min() >= 0.0 and w.max() <= s.max_power_w + 1e-9, s.id
        on = w[w > 0]
        if s.kind == "ev_charger":
            assert on.size == 0 or on.min() >= s.min_power_w - 1e-9, "EV below its 6 A minimum"
        if s.kind == "heat_pump":
            assert np.all(np.isclose(on, s.max_power_w)), "heat pump is on/off"
            # minimum on and off times: every run and every rest (inside the window) lasts long enough
            edges = np.flatnonzero(np.diff((w > 0).astype(int)))
            runs = np.diff(edges)
            assert runs.size == 0 or runs.min() >= min(s.min_on_s, s.min_off_s)


def test_no_command_takes_effect_before_its_delay(random_trace):
    ev = random_trace.events
    assert len(ev) > 100
    applied = ev[:, EV_APPLIED] >= 0
    assert np.all(ev[applied, EV_APPLIED] >= ev[applied, EV_SENT] + ev[applied, EV_DELAY])
    assert not np.any(applied & (ev[:, EV_LOST] > 0)), "a lost command took effect"
    assert np.any(ev[:, EV_LOST] > 0), "the link lost nothing: ack_rate is not exercised"
    # and the slaves really follow their applied commands, not the sent ones: a slave's power
    # cannot change in response to a command before that command was applied
    fr = random_trace.frame
    site = load_site()
    for s_idx, s in enumerate(site.slaves):
        rows = ev[(ev[:, EV_SLAVE] == s_idx) & applied]
        first_apply = rows[:, EV_APPLIED].min() if len(rows) else np.inf
        w = fr[f"slave_w_{s.id}"].to_numpy()
        t = fr["t"].to_numpy()
        assert np.all(w[t < first_apply] == 0.0), f"{s.id} drew power before any command arrived"


def test_violations_are_counted_and_actions_stay_safe():
    env = ExportControlEnv({"episode_s": 60})
    env.reset(seed=0)
    for bad in (np.array([np.nan, 0, 0]), np.array([5.0, -7.0, 0.0]), np.zeros(7)):
        _, r, _, _, info = env.step(bad)
        assert info["safety_violation"] and np.isfinite(r)
        assert np.all((env._targets >= 0) & (env._targets <= env.max_power_w))
    _, _, _, _, info = env.step(np.zeros(3, np.float32))
    assert not info["safety_violation"]


def test_cloudy_window_pi_beats_zero_and_oracle_bounds_pi():
    cfg = ExportEnvConfig(scenario="broken_clouds", episode_s=4 * 3600, start_s=10 * 3600)
    m = {c: metrics_of_record(rollout(make_controller(c, 7500), cfg, seed=2).frame) for c in ("zero", "pi", "oracle")}
    assert m["pi"]["export_kwh"] < 0.5 * m["zero"]["export_kwh"]
    assert m["oracle"]["export_kwh"] <= m["pi"]["export_kwh"]


def test_vector_env_is_deterministic_and_batched():
    def run():
        venv = ExportControlVectorEnv(4, {"episode_s": 60, "scenario": "broken_clouds"})
        obs, _ = venv.reset(seed=1)
        total = np.zeros(4)
        for _ in range(60):
            obs, r, term, trunc, _ = venv.step(np.zeros((4, 3), np.float32))
            total += r
        assert trunc.all() and not term.any()
        return obs, total

    (o1, r1), (o2, r2) = run(), run()
    assert o1.shape == (4, N_FEATURES)
    assert np.array_equal(o1, o2) and np.array_equal(r1, r2)
    assert len(set(np.round(r1, 6))) == 4, "batch members should be different days"


def test_pure_python_kernels_match_compiled(tmp_path):
    """The edge runs the kernels without numba (GRIDRL_NO_JIT=1): same numbers as compiled."""
    code = textwrap.dedent(
        """
        import numpy as np, sys
        from envs.rollout import rollout, make_controller
        from envs.export_env import ExportEnvConfig
        tr = rollout(make_controller("pi", 7500), ExportEnvConfig(scenario="broken_clouds", episode_s=120,
                     start_s=43200), seed=4)
        np.save(sys.argv[1], tr.obs)
        """
    )
    outs = []
    for jit in ("0", "1"):
        path = tmp_path / f"obs_{jit}.npy"
        env = {"GRIDRL_NO_JIT": "1" if jit == "0" else "0", "PATH": ""}
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, cwd=Path(envs.__file__).parents[1])
        outs.append(np.load(path))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-9)


BAD_SITES = [
    ("unknown key", {"slaves.0.colour": "red"}, "slaves[0].colour"),
    ("wrong type", {"latitude_deg": "north"}, "latitude_deg"),
    ("bad phase", {"slaves.0.phase": 4}, "slaves[0].phase"),
    ("EV without minimum", {"slaves.1.min_power_w": 0.0}, "slaves[1].min_power_w"),
    ("ack rate", {"link.ack_rate": 1.5}, "link.ack_rate"),
]


@pytest.mark.parametrize("label,change,field", BAD_SITES, ids=[b[0] for b in BAD_SITES])
def test_bad_site_yaml_names_file_and_field(tmp_path, label, change, field):
    import yaml

    data = yaml.safe_load(DEFAULT_SITE_PATH.read_text())
    for dotted, value in change.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[leaf] = value
    path = tmp_path / "bad_site.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    msg = str(exc.value)
    assert str(path) in msg and field in msg, msg


def test_missing_site_file_and_missing_field(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_site(tmp_path / "nope.yaml")
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nlatitude_deg: 10\npv: []\n")
    with pytest.raises(ConfigError, match=r"s.yaml: field 'slaves': required"):
        load_site(path)


def test_warm_start_begins_where_the_pi_left_the_day():
    """warm_start='pi': an afternoon window starts from the day the PI controlled since midnight (tanks
    taken, energy counted), the same as stepping the PI through the morning by hand; same seed, same start."""
    from envs.controllers import PIController
    from envs.state_spec import FEAT

    kw = dict(scenario="clear", episode_s=600, start_s=13 * 3600, day_of_year=172)
    warm = ExportControlEnv(ExportEnvConfig(**kw, warm_start="pi"))
    cold = ExportControlEnv(ExportEnvConfig(**kw))
    o_warm, _ = warm.reset(seed=5)
    o_cold, _ = cold.reset(seed=5)
    assert np.array_equal(o_warm, warm.reset(seed=5)[0])
    kwh = [FEAT[f"acked_kwh_since_available_l{p}"] for p in (1, 2, 3)]
    assert o_cold[kwh].sum() == 0 and o_warm[kwh].sum() > 1.0, "the morning's energy is in the warm state"
    # by hand: the whole day from 00:00 under the PI, read at 13:00
    day = ExportControlEnv(ExportEnvConfig(**{**kw, "episode_s": 13 * 3600 + 600, "start_s": 0}))
    obs, _ = day.reset(seed=5)
    pi = PIController()
    for _ in range(13 * 3600):
        obs, *_ = day.step(_to_unit(pi.act(obs), day.max_power_w))
    np.testing.assert_allclose(o_warm, obs, rtol=1e-5, atol=1e-3)
    for _ in range(600):  # and the episode still lasts episode_s steps
        *_, truncated, _ = warm.step(np.zeros(3, np.float32))
    assert truncated
    # the vector env: a group shares its window start
    vec = ExportControlVectorEnv(4, ExportEnvConfig(**{**kw, "start_s": None}, warm_start="pi"))
    obs4, _ = vec.reset(seed=1)
    assert len({round(float(t), 3) for t in obs4[:, FEAT["solar_time_sin"]]}) == 1


def _to_unit(targets_w: np.ndarray, max_w: float) -> np.ndarray:
    from envs.actions import to_unit

    return to_unit(targets_w, max_w)[0].astype(np.float64)


def test_reward_floor_scales_each_window_by_its_surplus():
    """reward_floor_kwh: a window's rewards are divided by its surplus energy plus the floor (times the
    floor); without it they are the simulator's."""
    from envs.export_env import ExportControlVectorEnv

    action = np.full((8, 3), -1.0, np.float32)  # nothing controlled: the reward is the day's export
    runs = {}
    for floor in (None, 2.0):
        env = ExportControlVectorEnv(8, ExportEnvConfig(scenario="random", episode_s=600, reward_floor_kwh=floor))
        env.reset(seed=3)
        surplus = np.clip(env.sim.exo[:, 1:, :3].sum(-1) - env.sim.exo[:, 1:, 3:].sum(-1), 0, None).sum(-1) / 3.6e6
        runs[floor] = (sum(env.step(action)[1] for _ in range(5)), surplus)
    raw, surplus = runs[None]
    scaled, _ = runs[2.0]
    assert surplus.max() > 2 * surplus.min() + 0.1, "the windows must differ"
    np.testing.assert_allclose(scaled, raw * 2.0 / (surplus + 2.0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gate", [0.0, 1.5])
def test_a_supervising_agent_sets_the_pis_preference_for_decision_s_seconds(gate):
    """decision_s: one action (the PI's dispatch preference) steps decision_s seconds of the PI with it (with
    ``preference_gate``, gated as envs/controllers.py ``gated_w`` says); the reward is those seconds' mean;
    the single env, a decision_s that does not divide the window and a negative gate say so."""
    from envs.config import ConfigError
    from envs.controllers import continuous_power, gated_w, preference_targets
    from envs.export_env import ExportControlVectorEnv

    base = {"scenario": "broken_clouds", "start_s": 11 * 3600, "episode_s": 1200}
    env = ExportControlVectorEnv(3, ExportEnvConfig(**base, decision_s=300, preference_gate=gate))
    twin = ExportControlVectorEnv(3, ExportEnvConfig(**base))  # the same days at 1 s, the PI by hand
    gate_w = gated_w(twin.site, gate)
    assert gate_w == (np.inf if gate == 0 else 1.5 * 1380.0)  # the default site's EV starts at 1,380 W
    assert env.single_action_space.shape == (1,) and twin.single_action_space.shape == (3,)
    obs, _ = env.reset(seed=5)
    obs1, _ = twin.reset(seed=5)
    np.testing.assert_array_equal(obs, obs1)
    pref = np.array([[-1.0], [0.0], [1.0]], np.float32)
    cont = continuous_power(twin.site)
    for _ in range(2):
        rewards = []
        for _ in range(300):
            obs1, r, *_ = twin.step(preference_targets(obs1, pref[:, 0], cont, gate_w=gate_w) / 3750.0 - 1.0)
            rewards.append(r)
        obs, reward, _, truncated, _ = env.step(pref)
        np.testing.assert_allclose(obs, obs1, rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(reward, np.mean(rewards, axis=0), rtol=1e-6, atol=1e-9)
    assert not truncated.any()
    env.step(pref)
    assert env.step(pref)[3].all(), "4 decisions of 300 s end a 1,200 s window"
    with pytest.raises(ConfigError, match="decision_s"):
        ExportEnvConfig.from_dict({**base, "decision_s": 700})
    with pytest.raises(ConfigError, match="preference_gate"):
        ExportEnvConfig.from_dict({**base, "decision_s": 300, "preference_gate": -1})
    with pytest.raises(ValueError, match="vector env only"):
        ExportControlEnv(ExportEnvConfig(**base, decision_s=300))


def test_site_features_follow_each_members_state():
    """site_features: each member's observation is its state vector (unchanged) followed by its drawn site's
    envs/site.py site_features; the single env refuses it."""
    from envs.export_env import ExportControlVectorEnv
    from envs.site import SITE_FEATURE_NAMES, load_site, site_features
    from envs.state_spec import N_FEATURES

    base = {"scenario": "clear", "start_s": 11 * 3600, "episode_s": 600, "site_draws": 2}
    env = ExportControlVectorEnv(4, ExportEnvConfig(**base, site_features=True))
    twin = ExportControlVectorEnv(4, ExportEnvConfig(**base))
    assert env.single_observation_space.shape == (N_FEATURES + len(SITE_FEATURE_NAMES),)
    obs, _ = env.reset(seed=3)
    obs1, _ = twin.reset(seed=3)
    for _ in range(3):
        np.testing.assert_array_equal(obs[:, :N_FEATURES], obs1)
        for g, members in enumerate(env._groups):
            np.testing.assert_array_equal(obs[members, N_FEATURES:], np.tile(site_features(env._sims[g].site), (2, 1)))
        assert env.observation_space.contains(obs)
        action = np.zeros((4, 3), np.float32)
        obs, *_ = env.step(action)
        obs1, *_ = twin.step(action)
    assert not np.array_equal(obs[0, N_FEATURES:], obs[2, N_FEATURES:]), "two drawn sites, two descriptions"
    default = dict(zip(SITE_FEATURE_NAMES, site_features(load_site(None)), strict=True))
    assert default["wh_kw"] == pytest.approx(3.0 / 4.0) and default["pv_kwp"] > 0  # envs/sites/default.yaml
    with pytest.raises(ValueError, match="vector env only"):
        ExportControlEnv(ExportEnvConfig(**base, site_features=True))


def test_a_pi_baseline_makes_the_reward_the_gain_over_the_pi_on_the_same_day():
    """reward_baseline 'pi': each member's PI-run twin lives the same day (generator copies), so the PI's own
    preference earns exactly 0 and any other earns its reward less the PI's (the run without the baseline)."""
    from envs.export_env import ExportControlVectorEnv

    base = {"scenario": "random", "start_s": 10 * 3600, "episode_s": 1200, "decision_s": 300, "site_draws": 2,
            "reward_floor_kwh": 2.0}  # fmt: skip
    pi_env = ExportControlVectorEnv(4, ExportEnvConfig(**base, reward_baseline="pi"))
    pi_env.reset(seed=9)
    for _ in range(4):
        _, reward, *_ = pi_env.step(np.zeros((4, 1), np.float32))
        np.testing.assert_array_equal(reward, 0.0)
    env = ExportControlVectorEnv(4, ExportEnvConfig(**base, reward_baseline="pi"))
    plain = ExportControlVectorEnv(4, ExportEnvConfig(**base))
    pi_run = ExportControlVectorEnv(4, ExportEnvConfig(**base))
    for e in (env, plain, pi_run):
        e.reset(seed=9)
    pref = np.ones((4, 1), np.float32)
    for _ in range(4):
        obs, reward, *_ = env.step(pref)
        obs1, r1, *_ = plain.step(pref)
        _, r0, *_ = pi_run.step(np.zeros((4, 1), np.float32))
        np.testing.assert_array_equal(obs, obs1)
        np.testing.assert_allclose(reward, r1 - r0, rtol=1e-9, atol=1e-12)
    assert np.abs(reward).max() > 0, "the rule and the PI differ on these days"
    with pytest.raises(ConfigError, match="reward_baseline"):
        ExportEnvConfig.from_dict({**base, "reward_baseline": "oracle"})
