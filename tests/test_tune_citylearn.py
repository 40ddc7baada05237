"""Tune sweeps on the CityLearn domain (issue 18): the shipped sweep files load, and a tiny PPO sweep on the
2022 district (../shared/citylearn) runs through ``gridrl tune``, and promotes its best checkpoint (the
export domain's promotion rule, against the PI, does not apply)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.proctree import last_json
from tests.test_tune import gridrl_tune
from tune.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "tune" / "citylearn").glob("*.yaml"))


def test_every_algorithm_has_a_citylearn_sweep_and_each_loads():
    assert {p.stem for p in SWEEPS} == {"ppo", "a2c", "sac"}
    for p in SWEEPS:
        spec = load_sweep(p)
        assert spec.domain == "citylearn" and spec.algorithm.lower() == p.stem, p
        assert spec.file.metric == "env_runners/episode_return_mean" and spec.file.num_samples == 50, p


@pytest.mark.slow
@pytest.mark.smoke
def test_a_tiny_citylearn_sweep_promotes_its_best_checkpoint(tmp_path):
    sweep = yaml.safe_load((REPO / "tune" / "citylearn" / "ppo.yaml").read_text())
    env_config = yaml.safe_load((REPO / "rllib_configs" / "citylearn" / "ppo.yaml").read_text())["environment"]
    env_config = {**env_config["env_config"], "end_time_step": 95, "episode_time_steps": 48, "holdout_weeks": []}
    env_config["schema"] = env_config["schema"].replace("${repo}", str(REPO))
    sweep.update(
        scheduler={"type": "fifo"},
        stop={"training_iteration": 1},
        overrides={
            "environment": {"env_config": env_config},
            "env_runners": {"num_env_runners": 0, "num_envs_per_env_runner": 2},
            "training": {"train_batch_size_per_learner": 96, "minibatch_size": 48, "num_epochs": 1},
        },
    )
    p = tmp_path / "ppo.yaml"
    p.write_text(yaml.safe_dump(sweep))
    proc = gridrl_tune("--config", str(p), "--num-samples", "2", "--storage-path", str(tmp_path / "s"), "--seed", "1")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    summary = last_json(out)
    assert summary["trials"] == 2 and summary["errors"] == 0 and summary["promoted"] is True, summary
    best = tmp_path / "s" / "best" / "citylearn" / "ppo"
    assert (best / "checkpoint").is_dir()
    record = json.loads((best / "promotion.json").read_text())
    assert record["metric"] == "env_runners/episode_return_mean" and record["sweep_id"] == "sweep-citylearn-ppo"
    assert "rule" not in record  # the promotion rule judges export-domain policies against the PI only
