"""Smoke tier: RLlib (new API stack) trains on ``gridrl-citylearn`` for one iteration on a local Ray.

Each test is a real run on a 2-day mall episode (47 steps), under a minute on 2 CPUs; the trained PPO
policy is then loaded from its checkpoint and evaluated against the baselines.
"""

from __future__ import annotations

import json
import math

import pytest

from envs.citylearn.env import ENV_NAME, register
from envs.citylearn.schema import build_schema
from envs.citylearn.site import load_site

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def mall2(tmp_path_factory):
    out = tmp_path_factory.mktemp("mall2")
    build_schema(load_site(), out, days=2, seed=0)
    return out / "schema.json"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(
        address="local",  # our own Ray, even if a cluster is running on this machine
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    register()
    try:
        yield
    finally:
        ray.shutdown()


def _sampled(result: dict) -> tuple[float, float]:
    from ray.rllib.utils.metrics import (
        ENV_RUNNER_RESULTS,
        EPISODE_RETURN_MEAN,
        NUM_ENV_STEPS_SAMPLED_LIFETIME,
    )

    runners = result[ENV_RUNNER_RESULTS]
    return float(runners[NUM_ENV_STEPS_SAMPLED_LIFETIME]), float(runners[EPISODE_RETURN_MEAN])


def test_ppo_trains_one_iteration_then_evaluates(mall2, local_ray, tmp_path):
    from ray.rllib.algorithms.ppo import PPOConfig

    from envs.citylearn.evaluate import evaluate_controllers, load_rllib_policy

    config = (
        PPOConfig()
        .environment(ENV_NAME, env_config={"schema": str(mall2)})
        .env_runners(num_env_runners=1, rollout_fragment_length=48)
        .training(train_batch_size_per_learner=96, minibatch_size=48, num_epochs=1, lr=3e-4)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        steps, ret = _sampled(algo.train())
        checkpoint = algo.save(str(tmp_path / "ckpt")).checkpoint.path
    finally:
        algo.stop()
    assert steps >= 96 and math.isfinite(ret) and ret < 0

    policy = load_rllib_policy(checkpoint)
    evaluate_controllers({"schema": str(mall2)}, tmp_path / "eval", controllers=["no_control", "rbc"],
                         policies={"policy": policy}, seed=0)  # fmt: skip
    kpis = json.loads((tmp_path / "eval" / "kpis.json").read_text())
    assert set(kpis) == {"no_control", "rbc", "policy"}
    assert math.isfinite(kpis["policy"]["cost_total"]) and kpis["policy"]["time_steps"] == 47


def test_sac_trains_one_iteration(mall2, local_ray):
    from ray.rllib.algorithms.sac import SACConfig

    config = (
        SACConfig()
        .environment(ENV_NAME, env_config={"schema": str(mall2)})
        .env_runners(num_env_runners=0, rollout_fragment_length=1)
        .training(
            train_batch_size_per_learner=32,
            num_steps_sampled_before_learning_starts=32,
            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 10_000},
            actor_lr=3e-4,
            critic_lr=3e-4,
            alpha_lr=3e-4,
        )
        .reporting(min_sample_timesteps_per_iteration=64)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        steps, ret = _sampled(algo.train())
    finally:
        algo.stop()
    assert steps >= 64 and math.isfinite(ret)
