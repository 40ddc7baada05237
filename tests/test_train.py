"""Every training config, the same way: trains through the runner, saves, loads, acts the same.

Smoke tier: a real local Ray, 1-2 iterations per config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rllib_configs.loader import load_train_config
from rllib_configs.policy import load_policy, write_run_info
from rllib_configs.runner import RunOptions, configure, run_info, run_training

REPO = Path(__file__).resolve().parents[1]
ONLINE = ["export/ppo", "export/ppo_residual", "export/a2c", "export/sac"]


def _states(n: int = 100) -> np.ndarray:
    from envs.export_env import ExportEnvConfig
    from envs.rollout import make_controller, rollout

    cfg = ExportEnvConfig(scenario="broken_clouds", episode_s=n, start_s=43200)
    tr = rollout(make_controller("pi", 7500), cfg, seed=3)
    return tr.obs[:n].astype(np.float64)


@pytest.mark.smoke
@pytest.mark.parametrize("name", ONLINE)
def test_config_trains_through_the_runner(name, tmp_path, ray_session):
    spec = load_train_config(REPO / "rllib_configs" / f"{name}.yaml")
    summary = run_training(spec, RunOptions(storage_path=tmp_path, stop_iters=1, seed=1))
    ckpt = Path(summary["checkpoint"])
    assert ckpt.is_dir() and summary["metrics"]["training_iteration"] == 1
    json.dumps(summary)  # the summary line is JSON
    policy = load_policy(ckpt)
    a = policy.act_unit(_states())
    assert a.shape == (100, 3) and np.all(np.abs(a) <= 1.0)
    assert np.array_equal(a, load_policy(ckpt).act_unit(_states())), "greedy action must be deterministic"


def _offline_smoke_spec(name: str, dataset: Path):
    """An offline config with 2 learner updates per iteration (RLlib's least without remote learners):
    the smoke tests check that it trains, saves, loads and acts, and a CQL update costs ~4 s here."""
    spec = load_train_config(REPO / "rllib_configs/export" / f"{name}.yaml", dataset=str(dataset))
    spec.algo_config.offline_data(dataset_num_iters_per_learner=2)
    return spec


# slow tier for CI's time budget: the default suite took 953 s on 2 quiet cores (2026-12-06)
@pytest.mark.slow
@pytest.mark.smoke
def test_offline_configs_train_bc_then_cql_from_bc(small_dataset, tmp_path, ray_session):
    bc = run_training(_offline_smoke_spec("bc", small_dataset),
                      RunOptions(storage_path=tmp_path, stop_iters=1, seed=1))
    cql_spec = _offline_smoke_spec("cql", small_dataset)
    cql = run_training(cql_spec,
                       RunOptions(storage_path=tmp_path, stop_iters=1, seed=1, init_from=bc["checkpoint"]))
    assert "evaluation/env_runners/episode_return_mean" in cql["metrics"]
    # CQL's policy starts from BC's: before any CQL update they act the same (tanh(mean) vs mean aside)
    from rllib_configs.offline import policy_state_from

    assert set(policy_state_from(bc["checkpoint"])) <= set(policy_state_from(cql["checkpoint"]))
    for ckpt in (bc["checkpoint"], cql["checkpoint"]):
        a = load_policy(ckpt).act_unit(_states()[:20])
        assert a.shape == (20, 3) and np.all(np.abs(a) <= 1.0)


@pytest.mark.smoke
# residual CQL in the slow tier (39 s in CI): the pipeline trains residual IQL, which the default tier keeps
@pytest.mark.parametrize("name", [pytest.param("cql_residual", marks=pytest.mark.slow), "iql_residual"])
def test_offline_rl_with_the_pi_inside_trains_and_acts_on_raw_states(name, small_dataset, tmp_path,
                                                                     ray_session):
    run = run_training(_offline_smoke_spec(name, small_dataset),
                       RunOptions(storage_path=tmp_path, stop_iters=1, seed=1))
    assert "evaluation/env_runners/episode_return_mean" in run["metrics"]
    policy = load_policy(run["checkpoint"])
    assert policy.normalizer is None, "the module normalises raw states itself"
    a = policy.act_unit(_states()[:20])
    assert a.shape == (20, 3) and np.all(np.abs(a) <= 1.0)
    assert np.array_equal(a, load_policy(run["checkpoint"]).act_unit(_states()[:20]))
    # Its greedy graph, PI included, exports to ONNX (atanh has no opset-17 export: it is spelled with log1p)
    from serve.bundle import export_checkpoint

    onnx = export_checkpoint(run["checkpoint"], tmp_path / "bundle", seed=0, n_parity=200)["onnx"]
    assert onnx["input_normalised"] is False and onnx["parity"]["max_abs_diff"] <= onnx["parity"]["tolerance"]


@pytest.mark.smoke
def test_offline_iql_trains_saves_loads_and_acts(small_dataset, tmp_path, ray_session):
    iql = run_training(_offline_smoke_spec("iql", small_dataset),
                       RunOptions(storage_path=tmp_path, stop_iters=2, seed=1))
    m = iql["metrics"]
    assert m["training_iteration"] == 2 and "evaluation/env_runners/episode_return_mean" in m
    assert np.isfinite(m["learners/default_policy/policy_loss"])
    assert np.isfinite(m["learners/default_policy/qf_loss"])
    from rllib_configs.offline import policy_state_from

    assert {"pi.net.mlp.0.weight"} <= set(policy_state_from(iql["checkpoint"]))
    policy = load_policy(iql["checkpoint"])
    assert policy.info["algorithm"] == "IQL"
    a = policy.act_unit(_states()[:20])
    assert a.shape == (20, 3) and np.all(np.abs(a) <= 1.0)
    assert np.array_equal(a, load_policy(iql["checkpoint"]).act_unit(_states()[:20]))


@pytest.mark.smoke
def test_offline_bc_same_seed_same_first_iteration(small_dataset, tmp_path, ray_session):
    """Same seed, same minibatches (rllib_configs/offline.py InMemoryOfflineData draws them from the seed)."""
    spec = load_train_config(REPO / "rllib_configs/export/bc.yaml", dataset=str(small_dataset))
    spec.algo_config.offline_data(dataset_num_iters_per_learner=10)  # 10 minibatches: enough to differ
    loss = [
        run_training(spec, RunOptions(storage_path=tmp_path / str(i), stop_iters=1, seed=4))["metrics"][
            "learners/default_policy/policy_loss"
        ]
        for i in range(2)
    ]
    assert loss[0] == loss[1]


@pytest.mark.smoke
def test_save_and_restore_give_the_same_greedy_action(tmp_path, ray_session):
    spec = load_train_config(REPO / "rllib_configs/export/ppo.yaml")
    opts = RunOptions(storage_path=tmp_path, seed=2, num_env_runners=0)
    config = configure(spec, opts)
    config.env_runners(num_envs_per_env_runner=8, rollout_fragment_length=75)
    config.training(train_batch_size_per_learner=600, minibatch_size=200, num_epochs=2)
    algo = config.build_algo()
    try:
        algo.train()
        from rllib_configs.policy import Policy

        live = Policy(algo.get_module(), load_policy_normalizer(config), {}, tmp_path)
        before = live.act_unit(_states())
        algo.save_to_path(str(tmp_path / "run" / "checkpoint_000000"))
    finally:
        algo.stop()
    write_run_info(tmp_path / "run", run_info(spec, config, opts))
    after = load_policy(tmp_path / "run" / "checkpoint_000000").act_unit(_states())
    np.testing.assert_array_equal(before, after)


def load_policy_normalizer(config):
    from envs.normalization import ObsNormalizer

    return ObsNormalizer.load(config.env_config["normalization"])


@pytest.mark.smoke
def test_same_seed_same_first_iteration(tmp_path, ray_session):
    spec = load_train_config(REPO / "rllib_configs/export/ppo.yaml")

    def first_iteration(seed):
        config = configure(spec, RunOptions(storage_path=tmp_path, seed=seed, num_env_runners=0))
        config.env_runners(num_envs_per_env_runner=8, rollout_fragment_length=75)
        config.training(train_batch_size_per_learner=600, minibatch_size=200, num_epochs=2)
        algo = config.build_algo()
        try:
            r = algo.train()
        finally:
            algo.stop()
        return r["env_runners"]["reward_per_step_mean"], r["learners"]["default_policy"]["total_loss"]

    a, b, c = first_iteration(5), first_iteration(5), first_iteration(6)
    assert a == b
    assert a != c
