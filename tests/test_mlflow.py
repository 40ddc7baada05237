"""MLflow tracking (``--mlflow [URI]``, rllib_configs/tracking.py): a short real training run logs its metrics
through Tune's MLflowLoggerCallback to a local file store, read back with MLflow's own client; and the flag's
errors are named before anything starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rllib_configs.loader import load_train_config
from rllib_configs.runner import RunOptions, run_training
from rllib_configs.tracking import STORE_DIR, TrackingError, resolve

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.smoke
def test_a_training_run_writes_its_metrics_to_a_file_store(tmp_path, ray_session):
    from mlflow.tracking import MlflowClient

    uri = resolve("", tmp_path)  # --mlflow without a URI
    assert uri == (tmp_path.resolve() / STORE_DIR).as_uri()
    spec = load_train_config(REPO / "rllib_configs/export/ppo.yaml")
    spec.algo_config.env_runners(num_envs_per_env_runner=8, rollout_fragment_length=32)
    spec.algo_config.training(train_batch_size_per_learner=256, minibatch_size=128, num_epochs=1)
    summary = run_training(spec, RunOptions(storage_path=tmp_path, stop_iters=2, seed=0, mlflow=uri))
    trial = Path(summary["trial_dir"])
    results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in results] == [1, 2]

    assert (tmp_path / STORE_DIR).is_dir()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ppo")  # the run's name
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["config"].endswith("ppo.yaml")
    # every iteration's metrics, as Tune wrote them to result.json
    from ray.tune.utils import flatten_dict

    flat = [flatten_dict(r) for r in results]
    for key in ("training_iteration", "env_runners/num_env_steps_sampled_lifetime", "time_total_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in flat]), key
    learner = [k for k in run.data.metrics if k.startswith("learners/default_policy/")]
    assert learner, sorted(run.data.metrics)[:20]
    # the trial's short parameters (long ones left out), the learning rate among them
    assert float(run.data.params["lr"]) == pytest.approx(float(results[-1]["config"]["lr"]))
    assert all(len(v) <= 500 for v in run.data.params.values())


def test_the_flag_names_what_is_wrong_before_anything_starts(tmp_path, monkeypatch, capsys):
    assert resolve(None, tmp_path) is None
    assert resolve("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    with pytest.raises(TrackingError, match="give --mlflow a tracking URI"):
        resolve("", "s3://bucket/runs")
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        with pytest.raises(TrackingError, match="needs SQLAlchemy"):
            resolve(f"sqlite:///{tmp_path}/mlflow.db", tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(TrackingError, match=r"pip install gridrl\[mlflow\]"):
        resolve("", tmp_path)
    from scripts.cli import main

    for command in (["train", "--config", "rllib_configs/export/ppo.yaml"],
                    ["tune", "--config", "tune/export/ppo.yaml"]):
        code = main([*command, "--storage-path", str(tmp_path), "--mlflow"])
        err = capsys.readouterr().err
        assert code == 2 and "pip install gridrl[mlflow]" in err and "Traceback" not in err, err
        assert not list(tmp_path.iterdir()), "nothing is written before the flag is checked"
