"""``gridrl retrain``: new logs merged into the dataset, the policy and the forward model fine-tuned from
their checkpoints, the new policy judged against the old bundle by the promotion rule, a bundle only if it
wins.

Default tier (no Ray; 4 tests, 19 s at load 9, imports and the model's spec most of it): the merge into a
new folder (the source dataset untouched, every row once), the decision (the new policy must beat the PI
and the old controller), where the checkpoints come from (the manifest, the pipeline's report.json beside a
bundle, the flags; an error naming the manifest when none), the forward model's init_from.
Slow (3 tests, 63 s at load 1.3-4: the fixture's BC, CQL and model training about 35 s, the retrain 23 s):
one real retrain of a pipeline-like PI bundle on a tiny dataset (real Ray, RLlib CQL from BC, the forward
model's Tune trial), refused by the rule, which leaves no bundle and the old bundle and dataset byte for
byte; the ship path on its fine-tuned checkpoint (the new bundle's manifest names its lineage, and the next
retrain finds it there); tune's rule verdict on a checkpoint. Not under 40 s: two RLlib builds and a Tune
trial in the fixture, two more in the retrain.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from envs.promotion import PromotionConfig, Verdict, decide
from offline_data.build import BuildConfig, build
from offline_data.extend import extend_dataset
from offline_data.generate import GenerateConfig, generate
from serve.bundle import export_baseline, load_bundle
from serve.retrain import RetrainError, decision, resolve_lineage, versus_incumbent

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"model.hidden": 16, "model.members": 2, "model.context": 4, "training.steps_per_iter": 10,
              "training.batch_size": 32, "training.val_windows": 100, "training.num_threads": 1}  # fmt: skip


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _logs(root: Path, name: str, date: str, seed: int, controller: str = "pi") -> Path:
    cfg = GenerateConfig(days=1, start_date=date, hours=0.5, start_hour=10.0, seed=seed,
                         scenario="broken_clouds", controller=controller)  # fmt: skip
    generate(cfg, root / name)
    return root / name


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Half an hour of PI logs built into a dataset D, and half an hour of a later day of dithered-PI logs."""
    root = tmp_path_factory.mktemp("retrain_data")
    old = _logs(root, "raw_old", "2025-06-01", 0)
    new = _logs(root, "raw_new", "2025-06-02", 1, "dithered_pi")
    build(old, root / "dataset", BuildConfig(), progress=False)
    return {"root": root, "old": old, "new": new, "dataset": root / "dataset"}


# --- default tier


def test_merge_writes_a_new_dataset_and_leaves_the_old_one_as_it_was(data, tmp_path):
    before = tree(data["dataset"])
    again = tmp_path / "old_copy"  # the old logs again, from another folder: their rows count once
    shutil.copytree(data["old"], again)
    merged = extend_dataset(data["dataset"], [data["new"], again], tmp_path / "merged")
    assert tree(data["dataset"]) == before
    assert merged["days_added"] == ["2025-06-02"]
    assert merged["manifest"]["days"]["reused"] == ["2025-06-01"]  # the old day is not rebuilt
    old = json.loads((data["dataset"] / "manifest.json").read_text())
    alone = build(data["new"], tmp_path / "alone", BuildConfig(), progress=False)
    for stream, counts in merged["after"]["counts"].items():  # every row once: old + new
        assert counts["rows_in"] == old["counts"][stream]["rows_in"] + alone["counts"][stream]["rows_in"] > 0
    assert merged["same_content_skipped"] == sum(1 for p in again.rglob("date=*/*") if p.is_file())
    assert "dithered_pi" in merged["manifest"]["logging"]["controllers"]


def _metrics(export: float, imported: float = 1.0, violations: int = 0) -> dict[str, float]:
    return {"export_kwh": export, "controlled_import_kwh": imported, "safety_violations": violations}


def _verdict(candidate: dict, pi: dict, cfg: PromotionConfig, name: str) -> Verdict:
    return decide(candidate, pi, cfg, "simulator", 1.0, None, [{"day": 0}], "2 validation days", name)


def test_the_new_policy_must_beat_the_pi_and_the_old_controller():
    cfg = PromotionConfig()
    pi = _metrics(10.0)
    old = _verdict(_metrics(8.0), pi, cfg, "the old")  # the old policy exports 20 % less than the PI
    good = _verdict(_metrics(7.0), pi, cfg, "the new")  # 30 % less than the PI, 12.5 % less than the old
    meh = _verdict(_metrics(7.8), pi, cfg, "the new")  # 22 % less than the PI, only 2.5 % less than the old
    assert good.promoted and meh.promoted and old.promoted
    wins, why = decision(good, versus_incumbent(good, old, cfg, "the new"))
    assert wins and "old bundle's controller" in why
    head = versus_incumbent(meh, old, cfg, "the new")
    wins, why = decision(meh, head)
    assert not wins and not head.promoted
    assert "7.800 kWh against the old bundle's controller's 8.000 kWh" in why and "the PI's 8" not in why
    # against the PI alone (the old bundle is the PI): the PI's verdict decides
    assert decision(meh, None) == (True, meh.reason)
    worse = _verdict(_metrics(9.9), pi, cfg, "the new")
    assert decision(worse, None) == (False, worse.reason)
    # a violation in the new policy refuses it whatever the export
    bad = _verdict(_metrics(1.0, violations=3), pi, cfg, "the new")
    assert not decision(bad, None)[0] and "3 safety violation" in bad.reason


def test_lineage_from_flags_manifest_or_the_report_beside_the_bundle(tmp_path):
    run = tmp_path / "pipeline"
    export_baseline("pi", run / "bundle")
    bundle = load_bundle(run / "bundle")
    with pytest.raises(RetrainError) as err:
        resolve_lineage(bundle, None, None)
    msg = str(err.value)
    assert str(run / "bundle" / "manifest.json") in msg and "--policy-checkpoint" in msg
    # the pipeline's report.json beside its bundle names the CQL policy and the forward model
    (run / "runs" / "cql").mkdir(parents=True)
    (run / "runs" / "fm").mkdir(parents=True)
    report = {"bundle": str(run / "bundle"), "cql": {"checkpoint": str(run / "runs" / "cql")},
              "forward_model": {"checkpoint": str(run / "runs" / "fm")}}  # fmt: skip
    (run / "report.json").write_text(json.dumps(report))
    found = resolve_lineage(bundle, None, None)
    assert (found.policy, found.model) == (str(run / "runs" / "cql"), str(run / "runs" / "fm"))
    assert found.policy_from == f"{run / 'report.json'}: cql.checkpoint"
    # the flags win; a flag naming nothing is refused by name
    assert resolve_lineage(bundle, str(run / "runs" / "fm"), None).policy_from == "--policy-checkpoint"
    with pytest.raises(RetrainError, match="gone.*--policy-checkpoint"):
        resolve_lineage(bundle, str(run / "gone"), None)
    # a report of another bundle says nothing about this one
    report["bundle"] = str(tmp_path / "elsewhere")
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(RetrainError, match="--policy-checkpoint"):
        resolve_lineage(bundle, None, None)


def test_forward_model_init_from_takes_the_weights_and_refuses_another_network(data, tmp_path):
    from rllib_configs.forward_model import Trainer
    from rllib_configs.loader import load_train_config

    spec = load_train_config(_shrunk("forward_model", TINY_MODEL, tmp_path), data["dataset"]).algo_config
    old = Trainer(spec, seed=0)
    ckpt = old.save(tmp_path / "ckpt")
    new = Trainer(spec, seed=1)
    assert _max_change(old.model.state_dict(), new.model.state_dict()) > 0.01  # another draw
    new.init_from(ckpt)
    assert _max_change(old.model.state_dict(), new.model.state_dict()) == 0.0
    assert new.iteration == 0 and new.samples == 0  # the schedule and the counters start afresh
    wider = tmp_path / "wider"
    wider.mkdir()
    wide = {**TINY_MODEL, "model.hidden": 24}
    other = load_train_config(_shrunk("forward_model", wide, wider), data["dataset"])
    assert other.algo_config.model.hidden == 24
    with pytest.raises(ValueError, match="does not fit this config's model section"):
        Trainer(other.algo_config, seed=0).init_from(ckpt)


# --- slow: a real retrain


def _shrunk(name: str, changes: dict, out: Path) -> Path:
    from rllib_configs.finetune import apply_overrides

    raw = yaml.safe_load((REPO / "rllib_configs" / "export" / f"{name}.yaml").read_text())
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(raw, changes, name), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def retrained(data, tmp_path_factory):
    """A PI bundle as the pipeline ships it (report.json beside it naming its CQL policy, from BC, and its
    forward model, one tiny iteration each), retrained on the new logs with a margin no policy meets (99 %):
    refused."""
    from cluster.local import init_ray
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training
    from scripts.cli import main

    root = tmp_path_factory.mktemp("retrain")
    configs = root / "configs"
    configs.mkdir()
    short = {"environment.env_config.episode_s": 60}
    bc = _shrunk("bc", {"offline_data.dataset_num_iters_per_learner": 5, **short}, configs)
    cql = _shrunk("cql", {"offline_data.dataset_num_iters_per_learner": 2, **short}, configs)
    fm = _shrunk("forward_model", TINY_MODEL, configs)
    init_ray(num_cpus=2, log_to_driver=False)
    runs = root / "pipeline" / "runs"

    def train(name: str, cfg: Path, init_from: str | None = None) -> dict:
        opts = RunOptions(storage_path=runs, seed=0, stop_iters=1, name=name, init_from=init_from)
        return run_training(load_train_config(cfg, dataset=str(data["dataset"])), opts)

    summaries = {"bc": train("bc", bc), "forward_model": train("forward_model", fm)}
    summaries["cql"] = train("cql", cql, summaries["bc"]["checkpoint"])  # as the pipeline: CQL from BC
    export_baseline("pi", root / "pipeline" / "bundle")
    report = {"bundle": str(root / "pipeline" / "bundle"), "cql": summaries["cql"],
              "forward_model": summaries["forward_model"]}  # fmt: skip
    (root / "pipeline" / "report.json").write_text(json.dumps(report, default=str))
    before = {"bundle": tree(root / "pipeline"), "dataset": tree(data["dataset"])}
    out = root / "out"
    argv = ["retrain", "--bundle", str(root / "pipeline" / "bundle"), "--logs", str(data["new"]),
            "--dataset", str(data["dataset"]), "--out", str(out), "--seed", "3", "--policy-iters", "1",
            "--policy-set", "training.actor_lr=0.00005", "--model-steps", "12", "--margin-pct", "99",
            "--val-days", "2", "--val-hours", "0.05", "--model-windows", "2",
            "--model-horizon-s", "30"]  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return {"root": root, "out": out, "before": before, "old": summaries, "code": code,
            "stdout": stdout.getvalue()}  # fmt: skip


def _model_state(checkpoint: str) -> dict:
    from envs.dynamics.model import ForwardModel

    return ForwardModel.load(checkpoint).state_dict()


def _max_change(a: dict, b: dict) -> float:
    import numpy as np

    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(np.asarray(a[k], float) - np.asarray(b[k], float)))) for k in a)


@pytest.mark.slow
def test_a_refused_retrain_writes_no_bundle_and_changes_nothing(retrained, data):
    """One retrain: merge, both fine-tunes (1 iteration each), candidate export, 2 validation windows in the
    simulator, the model's verdict."""
    from rllib_configs.finetune import module_state

    out, root = retrained["out"], retrained["root"]
    stdout = retrained["stdout"]
    assert retrained["code"] == 0, stdout[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    assert summary["shipped"]["controller"] == report["shipped"]["controller"] == "old"
    assert summary["shipped"]["bundle"] == str((root / "pipeline" / "bundle").resolve())
    verdict = report["promotion"]["new_vs_pi"]
    assert verdict["promoted"] is False and "at least 99 % lower" in report["shipped"]["reason"]
    assert report["promotion"]["new_vs_old"] is None  # the old bundle is the PI: one verdict decides
    assert len(verdict["cases"]) == 2 and report["promotion"]["forward_model"]["judge"] == "forward model"
    assert "shipped: nothing new: " in stdout and "new vs PI" in stdout
    # no bundle (nor its candidate) in DIR; the old bundle, its run and the dataset byte for byte
    assert not (out / "bundle").exists() and not (out / ".candidate_bundle").exists()
    assert (out / "dataset" / "manifest.json").is_file()
    assert all("controller" not in json.loads(p.read_text()) for p in out.rglob("manifest.json"))
    assert tree(root / "pipeline") == retrained["before"]["bundle"]
    assert tree(data["dataset"]) == retrained["before"]["dataset"]
    # the lineage: from the report beside the PI bundle; the fine-tunes started from those checkpoints
    lineage = report["lineage"]
    assert lineage["policy_from"].endswith("report.json: cql.checkpoint")
    assert report["policy"]["init_from"] == str(Path(retrained["old"]["cql"]["checkpoint"]).resolve())
    assert report["policy"]["init"] == "module" and report["policy"]["algorithm"] == "CQL"
    run_info = json.loads((out / "runs" / "forward_model" / "gridrl_run.json").read_text())
    assert run_info["init_from"] == str(Path(retrained["old"]["forward_model"]["checkpoint"]).resolve())
    # ... and the trials really started there: a few small steps away from the old weights (a fresh
    # initialisation is a whole draw away, > 0.1 in some parameter)
    old_policy, new_policy = (module_state(retrained["old"]["cql"]["checkpoint"]),
                              module_state(report["policy"]["checkpoint"]))  # fmt: skip
    assert any(k.startswith("target_qf") for k in old_policy)  # CQL's critics and their targets too
    assert _max_change(old_policy, new_policy) < 0.02
    assert _max_change(_model_state(retrained["old"]["forward_model"]["checkpoint"]),
                       _model_state(report["forward_model"]["checkpoint"])) < 0.05  # fmt: skip
    policy_yaml = yaml.safe_load(Path(report["policy"]["config"]).read_text())
    assert policy_yaml["training"]["actor_lr"] == 0.00005  # --policy-set
    model_yaml = yaml.safe_load(Path(report["forward_model"]["config"]).read_text())
    assert model_yaml["training"]["steps_per_iter"] == 12 and model_yaml["model"]["hidden"] == 16  # its own
    assert policy_yaml["environment"]["env_config"]["normalization"].endswith("policy_normalization.json")
    # the merged dataset holds both days
    assert report["dataset"]["days_added"] == ["2025-06-02"]
    assert sum(report["dataset"]["after"]["transitions"].values()) > sum(
        report["dataset"]["before"]["transitions"].values()
    )


@pytest.mark.slow
def test_the_ship_path_seals_the_lineage_and_the_next_retrain_finds_it(retrained, tmp_path):
    """What a winning retrain writes, on this retrain's fine-tuned checkpoint: the bundle loads, its
    manifest names the policy and forward model it came from, and resolve_lineage reads them there."""
    from serve.retrain import _export_candidate, _ship

    report = json.loads((retrained["out"] / "report.json").read_text())
    candidate = _export_candidate(report["policy"]["checkpoint"], tmp_path / ".candidate_bundle", 0)
    record = {"forward_model": report["forward_model"]["checkpoint"], "reason": "test"}
    shipped = _ship(candidate.path, tmp_path / "bundle", record, {"export_kwh": 1.0, "nan": float("nan")})
    assert not (tmp_path / ".candidate_bundle").exists()
    assert shipped.manifest["retrain"] == record and shipped.manifest["training"]["evaluation"]["nan"] is None
    lineage = resolve_lineage(shipped, None, None)
    assert lineage.policy == str(Path(report["policy"]["checkpoint"]).resolve())
    assert lineage.policy_from.endswith("manifest.json: training.checkpoint")
    assert lineage.model == report["forward_model"]["checkpoint"]
    assert lineage.model_from.endswith("manifest.json: retrain.forward_model")


@pytest.mark.slow
def test_tune_records_the_rule_verdict_of_what_it_promotes(retrained):
    """gridrl tune's promotion judges the promoted checkpoint's policy against the PI (tune/results.py)."""
    from tune.results import rule_verdict

    rule = PromotionConfig(days=2, hours=0.05, start_h=11.0)
    verdict = rule_verdict(retrained["old"]["cql"]["checkpoint"], rule, seed=0)
    assert verdict["judged"] is True and verdict["judge"] == "simulator" and len(verdict["cases"]) == 2
    assert verdict["reason"].startswith("the sweep's best policy ")
    assert verdict["promoted"] is all(c["passed"] for c in verdict["checks"])
