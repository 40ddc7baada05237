"""tune/results.py's table and rllib_configs.policy.latest_checkpoint read a real Tune experiment through Ray
(ResultGrid, ExperimentAnalysis, Result.from_path): three function trials on a local Ray, one that fails
before reporting, one that reports its metric only every other iteration."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import pytest

from rllib_configs.policy import latest_checkpoint
from tune.results import write_table

METRIC = "score"


def _trainable(config):
    from ray import tune

    if config["kind"] == "fails":
        raise RuntimeError("fails before reporting")
    for it in range(1, 5):
        metrics = {"loss": 1.0 / it}
        if config["kind"] == "every" or it % 2 == 0:  # "sparse": the metric every other iteration
            metrics[METRIC] = config["curve"][it - 1]
        with tempfile.TemporaryDirectory() as d:
            Path(d, "it.json").write_text(json.dumps(it))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    import ray
    from ray import tune

    from cluster.local import init_ray

    init_ray(num_cpus=2, log_to_driver=False)
    storage = tmp_path_factory.mktemp("tune_results")
    space = {"kind": tune.grid_search(["every", "sparse", "fails"]), "curve": [3.0, 1.0, 4.0, 2.0], "lr": 0.1}
    grid = tune.Tuner(
        _trainable, param_space=space,
        run_config=tune.RunConfig(name="exp", storage_path=str(storage), verbose=0),
    ).fit()  # fmt: skip
    yield grid, storage / "exp"
    ray.shutdown()


def test_the_table_has_every_trial_the_last_value_and_the_best_by_mode(experiment, tmp_path):
    grid, _ = experiment
    rows = {}
    for mode in ("min", "max"):
        out = tmp_path / mode
        out.mkdir()
        with open(write_table(grid, out, METRIC, {"lr": "training.lr"}, mode), newline="") as f:
            rows[mode] = sorted(csv.DictReader(f), key=lambda r: (r["status"], r[f"last/{METRIC}"]))
        assert (out / "results.parquet").is_file()
    for mode, best in (("min", "1.0"), ("max", "4.0")):
        fails, every, sparse = rows[mode][0], rows[mode][1], rows[mode][2]
        assert fails["status"] == "ERROR" and fails[f"best/{METRIC}"] == fails[f"last/{METRIC}"] == ""
        assert every["status"] == sparse["status"] == "OK" and every["param/training.lr"] == "0.1"
        assert every["iterations"] == sparse["iterations"] == "4"
        assert every[f"last/{METRIC}"] == sparse[f"last/{METRIC}"] == "2.0"  # sparse: its last report
        assert every[f"best/{METRIC}"] == best  # the best by mode, not always the largest
        # sparse reported 1.0 and 2.0 (iterations 2 and 4)
        assert sparse[f"best/{METRIC}"] == ("1.0" if mode == "min" else "2.0")


def test_latest_checkpoint_of_an_experiment_and_of_a_trial(experiment, tmp_path):
    grid, exp_dir = experiment
    newest = latest_checkpoint(exp_dir)
    assert newest.name == "checkpoint_000003" and json.loads((newest / "it.json").read_text()) == 4
    # of the two trials with checkpoints, the one whose last checkpoint was written last
    lasts = [Path(r.path) / "checkpoint_000003" for r in grid if r.config["kind"] != "fails"]
    assert newest == max(lasts, key=lambda p: p.stat().st_mtime)
    every = next(r for r in grid if r.config["kind"] == "every")
    assert latest_checkpoint(every.path) == Path(every.path) / "checkpoint_000003"
    # a checkpoint written after Tune last saved its experiment state is still found (read from disk)
    extra = Path(every.path) / "checkpoint_000004"
    extra.mkdir()
    (extra / "it.json").write_text("5")
    assert latest_checkpoint(every.path) == extra
    os.utime(extra)
    assert latest_checkpoint(exp_dir) == extra
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        latest_checkpoint(tmp_path)
    failed = next(r for r in grid if r.config["kind"] == "fails")
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        latest_checkpoint(failed.path)
