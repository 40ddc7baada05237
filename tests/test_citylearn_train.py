"""The CityLearn configs (rllib_configs/citylearn/*.yaml) through the runner, then ``gridrl evaluate``.

Smoke tier: each config trains 1 iteration on its own schema (the 2022 challenge district in ../shared; for
ppo_mall, a 5-day mall schema built here), shortened to a 4-day training window of 2-day episodes and small
batches, in one local Ray session; its checkpoint is then evaluated against both baselines on the day after
the training window. PPO on the district instead keeps its held-out-week setup, shrunk to two weeks: it
trains on 2-day episodes of week 0 and is evaluated on week 1, which it never saw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from envs.citylearn.baselines import make_baseline
from envs.citylearn.env import CityLearnEnvConfig, CityLearnRLlibEnv
from envs.citylearn.evaluate import TrainedPolicy, evaluate_policy, heldout_envs, heldout_window
from rllib_configs.loader import TrainSpec, load_train_config
from rllib_configs.policy import find_run_info, load_module_policy, load_policy
from rllib_configs.runner import RunOptions, run_training

REPO = Path(__file__).resolve().parents[1]
# Slow tier for CI's time budget (CI took 1,178 s at 8780e06): ppo_mall (58 s, most of it the mall's 666-wide
# env), a2c (26 s) and sac (21 s). ppo keeps the path (runner, checkpoint, policy, evaluation) in the default
# tier; what a2c and sac add is their algorithm's config, which test_tune_citylearn loads in the default tier.
SLOW = pytest.mark.slow
CONFIGS = ("ppo", *(pytest.param(name, marks=SLOW) for name in ("a2c", "sac", "ppo_mall")))
WEEK = 168
TRAIN_END = 95  # steps 0-95: 4 days of training data; the held-out day is steps 96-119
EPISODE = 48


def short_spec(name: str, schema: Path | None = None) -> TrainSpec:
    """The config ``name`` as written, with a short training window and batches one iteration can fill."""
    spec = load_train_config(REPO / "rllib_configs" / "citylearn" / f"{name}.yaml")
    config = spec.algo_config
    if name == "ppo":  # held-out weeks: week 1 of a two-week window
        env_config = {**config.env_config, "end_time_step": 2 * WEEK - 1, "episode_time_steps": EPISODE,
                      "holdout_weeks": [1]}  # fmt: skip
    else:
        env_config = {**config.env_config, "end_time_step": TRAIN_END, "episode_time_steps": EPISODE,
                      "holdout_weeks": []}  # fmt: skip
    config.environment(env_config={**env_config, **({"schema": str(schema)} if schema else {})})
    config.env_runners(num_envs_per_env_runner=2)
    if spec.algorithm == "SAC":
        config.training(train_batch_size_per_learner=32, num_steps_sampled_before_learning_starts=32)
        config.reporting(min_sample_timesteps_per_iteration=EPISODE)
    else:
        config.training(train_batch_size_per_learner=2 * EPISODE)
    if spec.algorithm == "PPO":
        config.training(minibatch_size=EPISODE, num_epochs=1)
    return spec


@pytest.fixture(scope="module")
def mall_schema(tmp_path_factory) -> Path:
    from envs.citylearn.schema import build_schema
    from envs.citylearn.site import load_site

    out = tmp_path_factory.mktemp("mall")
    build_schema(load_site(), out, days=5, seed=0)
    return out


@pytest.mark.smoke
@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_one_iteration_then_evaluates(name, ray_session, tmp_path, request):
    schema = request.getfixturevalue("mall_schema") if name.endswith("_mall") else None
    summary = run_training(short_spec(name, schema), RunOptions(storage_path=tmp_path / "runs", stop_iters=1))
    assert summary["domain"] == "citylearn" and summary["metrics"]["training_iteration"] == 1
    assert summary["metrics"]["env_runners/num_env_steps_sampled_lifetime"] >= EPISODE - 1
    ckpt = summary["checkpoint"]

    # On the training window the module takes the env's observations as they are: both loaders agree; the
    # RBC-residual run acts as the RBC plus its correction, within every device's bounds.
    env_config = find_run_info(ckpt)["env_config"]
    assert env_config["action_mode"] == "rbc_residual"
    env = CityLearnRLlibEnv({**env_config, "action_mode": "direct"})
    obs, _ = env.reset(seed=0)
    trained = TrainedPolicy(load_policy(ckpt), CityLearnRLlibEnv(env_config), env)
    correction = trained.policy.act_unit(trained.observe())[0]
    np.testing.assert_array_equal(load_module_policy(ckpt)(obs), correction)
    action = trained(obs)
    low, high = trained.devices.action_bounds()
    assert action.shape == env.action_space.shape and np.all(action >= low) and np.all(action <= high)
    expected = np.clip(make_baseline("rbc", env)(obs) + env_config["residual_scale"] * correction, low, high)
    np.testing.assert_allclose(action, expected, atol=1e-6)

    results = evaluate_policy(load_policy(ckpt), tmp_path / "eval", days=1, seed=0)
    kpis = json.loads((tmp_path / "eval" / "kpis.json").read_text())
    assert kpis == json.loads(json.dumps(results)) and set(kpis) == {"no_control", "rbc", "policy"}
    assert math.isfinite(kpis["policy"]["cost_total"]) and math.isfinite(kpis["policy"]["episode_return"])
    meta = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    targets = json.loads((tmp_path / "eval" / "targets.json").read_text())
    assert set(targets["criteria"]) == {
        "cost_reduction_vs_rbc",
        "co2_reduction_vs_rbc",
        "ev_success_drop_vs_rbc",
        "limit_violations",
    }
    assert kpis["policy"]["limit_violations"] == 0
    if name == "ppo":
        assert meta["windows"] == [[WEEK, 2 * WEEK - 1]]  # the held-out week, never a training episode
        assert all(k["time_steps"] == WEEK - 1 for k in kpis.values())
        assert (tmp_path / "eval" / "week_00" / "dispatch.png").stat().st_size > 0
    else:
        assert all(k["time_steps"] == 23 for k in kpis.values())  # 24 steps simulate 23 transitions
        assert (meta["start_time_step"], meta["end_time_step"]) == (TRAIN_END + 1, TRAIN_END + 24)
        assert (tmp_path / "eval" / "dispatch.png").stat().st_size > 0


def test_policy_sees_held_out_days_scaled_as_in_training(shared_dir):
    schema = str(shared_dir / "citylearn" / "citylearn_challenge_2022_phase_all_plus_evs")
    train = CityLearnEnvConfig(schema, start_time_step=0, end_time_step=8591)
    reference, held_out = heldout_envs(train, 7)
    assert (held_out.config.start_time_step, held_out.config.end_time_step) == (8592, 8759)
    twin = CityLearnRLlibEnv(train)
    on_twin, on_held_out = TrainedPolicy(None, reference, twin), TrainedPolicy(None, reference, held_out)
    obs, _ = twin.reset(seed=0)
    own, _ = held_out.reset(seed=0)
    zero = np.zeros(twin.action_space.shape, dtype=np.float32)
    shift = 0.0
    for _ in range(24):
        np.testing.assert_array_equal(on_twin.observe(), obs)  # same window: exactly the env's observation
        seen = on_held_out.observe()
        assert seen.shape == own.shape and np.all((seen >= 0) & (seen <= 1))
        shift = max(shift, float(np.max(np.abs(seen - own))))
        obs, *_ = twin.step(zero)
        own, *_ = held_out.step(zero)
    # The held-out env scales by its own week's limits: fed its observations, the policy sees other values.
    assert shift > 0.1


def test_heldout_window(shared_dir):
    schema = str(shared_dir / "citylearn" / "citylearn_challenge_2022_phase_all_plus_evs")
    assert heldout_window(CityLearnEnvConfig(schema, end_time_step=8591), 7) == {
        "start_time_step": 8592, "end_time_step": 8759}  # fmt: skip
    assert heldout_window(CityLearnEnvConfig(schema, start_time_step=48), 2) == {
        "start_time_step": 0, "end_time_step": 47}  # fmt: skip
    with pytest.raises(ValueError, match="held-out"):
        heldout_window(CityLearnEnvConfig(schema), 1)


def test_per_kind_config_gives_the_policy_one_correction_per_kind_of_device():
    """ppo_kind.yaml (the README's CityLearn table) is ppo.yaml with 2 actions on the district: every
    battery's correction and every charger's."""
    base = load_train_config(REPO / "rllib_configs" / "citylearn" / "ppo.yaml").algo_config
    kind = load_train_config(REPO / "rllib_configs" / "citylearn" / "ppo_kind.yaml").algo_config
    differs = {
        k
        for k in set(base.env_config) | set(kind.env_config)
        if base.env_config.get(k) != kind.env_config.get(k)
    }
    assert differs == {"residual_per"}
    assert (kind.env_config["residual_per"], kind.env_config["residual_scale"], kind.gamma) == (
        "kind",
        0.1,
        0.95,
    )
    env = CityLearnRLlibEnv({**kind.env_config, "end_time_step": 2 * WEEK - 1, "holdout_weeks": []})
    assert env.action_space.shape == (2,) and len(env.action_names) == 25


def test_narrow_config_keeps_the_reach_and_narrows_only_the_noise():
    """ppo_narrow.yaml (the README's CityLearn table) is ppo.yaml with a whole device's reach and the policy's
    noise started at a tenth of it: only residual_scale and the module differ."""
    from rllib_configs.narrow_gaussian import NarrowGaussianPPOModule

    base = load_train_config(REPO / "rllib_configs" / "citylearn" / "ppo.yaml").algo_config
    narrow = load_train_config(REPO / "rllib_configs" / "citylearn" / "ppo_narrow.yaml").algo_config
    keys = set(base.env_config) | set(narrow.env_config)
    assert {k for k in keys if base.env_config.get(k) != narrow.env_config.get(k)} == {"residual_scale"}
    assert (base.env_config["residual_scale"], narrow.env_config["residual_scale"]) == (0.1, 1.0)
    assert (narrow.gamma, narrow.lr, narrow.num_epochs) == (base.gamma, base.lr, base.num_epochs)
    assert narrow.rl_module_spec.module_class is NarrowGaussianPPOModule
    assert narrow.model_config["log_std_offset"] == pytest.approx(np.log(0.1), abs=0.01)


def test_narrow_module_shifts_the_log_std_and_keeps_the_mean():
    """The module's action-distribution inputs are the default module's with log_std + offset (same weights),
    in exploration and in training; a bad offset is refused naming the field."""
    import torch
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_configs.narrow_gaussian import NarrowGaussianPPOModule

    spec = {
        "module_class": NarrowGaussianPPOModule,
        "observation_space": gym.spaces.Box(0.0, 1.0, (6,), np.float32),
        "action_space": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
    }
    config = {"fcnet_hiddens": [16], "fcnet_activation": "tanh", "log_std_offset": -2.3}
    module = RLModuleSpec(**spec, model_config=config).build()
    batch = {"obs": torch.rand(5, 6)}
    with torch.no_grad():
        pairs = [(module._forward, DefaultPPOTorchRLModule._forward),
                 (module._forward_train, DefaultPPOTorchRLModule._forward_train)]  # fmt: skip
        for forward, default in pairs:
            got = forward(dict(batch))["action_dist_inputs"]
            want = default(module, dict(batch))["action_dist_inputs"]
            assert torch.equal(got[:, :3], want[:, :3])
            assert torch.allclose(got[:, 3:], want[:, 3:] - 2.3)
    with pytest.raises(ValueError, match="log_std_offset"):
        RLModuleSpec(**spec, model_config={**config, "log_std_offset": "wide"}).build()
