"""Smoke: RLlib BC trains one iteration on a built train split, on a local Ray (STACK.md: explicit spaces)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from envs.actions import N_ACTIONS
from envs.state_spec import FEATURE_HIGH, FEATURE_LOW, N_FEATURES
from offline_data.build import BuildConfig, build
from offline_data.generate import GenerateConfig, generate
from offline_data.transitions import RLLIB_COLUMNS


@pytest.mark.smoke
def test_bc_trains_one_iteration_on_the_train_split(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.rllib.algorithms.bc import BCConfig

    generate(GenerateConfig(days=1, hours=0.5, seed=1, defects=0.02), tmp_path / "raw")
    manifest = build(tmp_path / "raw", tmp_path / "ds", BuildConfig(), progress=False)
    train = tmp_path / "ds" / "train"
    assert manifest["splits"]["train"]["rows"] > 1000
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=300_000_000,
        log_to_driver=False,
    )
    try:
        ds = ray.data.read_parquet(str(train)).select_columns(list(RLLIB_COLUMNS))
        assert ds.count() == manifest["splits"]["train"]["rows"]
        config = (
            BCConfig()
            .environment(
                observation_space=gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, (N_FEATURES,), np.float32),
                action_space=gym.spaces.Box(-1.0, 1.0, (N_ACTIONS,), np.float32),
            )
            .offline_data(
                input_=[str(train)],
                input_read_method_kwargs={"columns": list(RLLIB_COLUMNS)},  # RLlib's columns only
                dataset_num_iters_per_learner=1,
                # Default is 2 pre-learner actors of 1 CPU each: on 2 CPUs the read tasks then starve.
                map_batches_kwargs={"concurrency": 1},
            )
            .training(train_batch_size_per_learner=256)
            .learners(num_learners=0)
        )
        algo = config.build_algo()
        try:
            result = algo.train()
        finally:
            algo.stop()
        loss = result["learners"]["default_policy"]["policy_loss"]
        assert np.isfinite(loss)
        assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["splits"]["train"]["files"]
    finally:
        ray.shutdown()
