"""Bundles: export (ONNX parity with torch), the manifest, loading, and refusing tampered bundles.

Unit tier: untrained RLModules built from the real configs (no Ray runtime). Smoke tier: one PPO
iteration through the runner, shared by the module, exported and run on the simulator for an hour.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from envs.state_spec import FEATURE_NAMES, N_FEATURES, spec_dict
from serve.bundle import (
    MANIFEST,
    ONNX_FILE,
    BundleError,
    export_baseline,
    export_checkpoint,
    load_bundle,
    write_manifest,
)

REPO = Path(__file__).resolve().parents[1]


def untrained_checkpoint(algo: str, path: Path, scale: float = 1.0) -> Path:
    """An RLModule of ``rllib_configs/export/<algo>.yaml`` with fresh weights, saved with its run info."""
    import gymnasium as gym
    import torch

    from rllib_configs.loader import load_train_config
    from rllib_configs.policy import write_run_info
    from rllib_configs.runner import RunOptions, run_info

    spec = load_train_config(REPO / "rllib_configs" / "export" / f"{algo}.yaml")
    config = spec.algo_config
    mspec = config.get_default_rl_module_spec()
    mspec.observation_space = gym.spaces.Box(-10.0, 10.0, (N_FEATURES,), np.float32)
    mspec.action_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    mspec.model_config = config.model_config
    torch.manual_seed(0)
    module = mspec.build()
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(scale)
    module.save_to_path(str(path))
    write_run_info(path, run_info(spec, config, RunOptions(storage_path=path.parent, seed=0)))
    return path


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ppo_untrained")
    ckpt = untrained_checkpoint("ppo", root / "module")
    export_checkpoint(ckpt, root / "bundle")
    return root / "bundle"


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _reseal(bundle: Path, edit=None) -> None:
    """Rewrite the manifest's hashes after an edit: what a careless (or hostile) hand would do."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    if edit is not None:
        edit(manifest)
    write_manifest(bundle, {k: v for k, v in manifest.items() if k not in ("files", "manifest_sha256")})


def test_manifest_carries_everything_a_site_needs(onnx_bundle):
    b = load_bundle(onnx_bundle)
    m = b.manifest
    assert m["controller"] == "onnx" and m["domain"] == "export" and m["algorithm"] == "PPO"
    assert [f["name"] for f in m["state_spec"]["features"]] == list(FEATURE_NAMES)
    assert (
        all(f["unit"] for f in m["state_spec"]["features"])
        and m["state_spec"]["sha256"] == spec_dict()["sha256"]
    )
    assert len(m["normalization"]["obs"]["mean"]) == N_FEATURES
    assert m["action"]["low_w"] == 0.0 and m["action"]["high_w"] == 7500.0
    assert m["safety"]["max_power_per_phase_w"] == 7500.0 and m["safety"]["violation_fallback_s"] == 3600.0
    assert "metrics" in m["training"] and m["gridrl_version"]
    assert datetime.fromisoformat(m["created_at"]).tzinfo is not None
    assert set(m["files"]) == {ONNX_FILE} and len(m["files"][ONNX_FILE]["sha256"]) == 64
    assert m["onnx"]["parity"]["max_abs_diff"] <= 1e-5 and m["onnx"]["parity"]["states"] == 1000


@pytest.mark.parametrize("kind", ["pi", "rbc"])
def test_baselines_export_as_bundles_with_the_same_manifest(kind, tmp_path, onnx_bundle):
    export_baseline(kind, tmp_path / kind)
    b = load_bundle(tmp_path / kind)
    assert b.controller == kind and b.name == kind and b.manifest["files"] == {}
    onnx_keys = set(json.loads((onnx_bundle / MANIFEST).read_text()))
    assert set(b.manifest) == onnx_keys
    d = b.make_wrapper().decide(b.normalizer.mean)
    assert d.source == "policy" and np.all((d.action_w >= 0) & (d.action_w <= 7500.0))


def test_export_refuses_to_overwrite(tmp_path):
    export_baseline("pi", tmp_path / "b")
    with pytest.raises(FileExistsError, match="--force"):
        export_baseline("pi", tmp_path / "b")
    export_baseline("rbc", tmp_path / "b", overwrite=True)
    assert load_bundle(tmp_path / "b").controller == "rbc"


def _flip_byte(b: Path) -> None:
    data = bytearray((b / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / ONNX_FILE).write_bytes(bytes(data))


def _truncate(b: Path) -> None:
    data = (b / ONNX_FILE).read_bytes()
    (b / ONNX_FILE).write_bytes(data[: len(data) // 3])


def _rename_feature(m: dict) -> None:
    m["state_spec"]["features"][3]["name"] = "export_total_w"
    m["state_spec"]["sha256"] = "0" * 64


def _spec_v1(m: dict) -> None:
    """The manifest of a bundle exported before state spec v2: 30 features, UTC hour, no headroom."""
    feats = m["state_spec"]["features"][:30]
    feats[26]["name"], feats[27]["name"] = "hour_sin", "hour_cos"
    m["state_spec"].update(version="export-state-v1", features=feats, sha256="c2bcd2cdc94e" + "0" * 52)


def _weaker_limit(m: dict) -> None:
    m["safety"]["max_rate_w_per_s"] = 1e9


TAMPERING = {
    "hash mismatch": (_flip_byte, None, "policy.onnx: sha256 mismatch"),
    "truncated onnx": (_truncate, None, "policy.onnx: sha256 mismatch.*truncated"),
    "truncated onnx, resealed": (_truncate, lambda m: None, "policy.onnx: not a loadable ONNX model"),
    "wrong spec": (None, _rename_feature, "state spec mismatch.*#3: 'export_total_w' vs 'export_w'"),
    "spec v1 bundle": (
        None,
        _spec_v1,
        "state spec mismatch: bundle has 'export-state-v1'.*this runtime has 'export-state-v3'.*30 vs 41 features"
        ".*'hour_sin' vs 'solar_time_sin'.*Re-export it",
    ),
    "edited manifest": (None, "no-reseal", "manifest_sha256 mismatch"),
    "missing onnx": (
        lambda b: (b / ONNX_FILE).unlink(),
        None,
        "policy.onnx: listed in the manifest but missing",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_a_tampered_bundle_is_refused_with_a_clear_message(case, onnx_bundle, tmp_path):
    b = _copy(onnx_bundle, tmp_path)
    on_files, on_manifest, message = TAMPERING[case]
    if on_files is not None:
        on_files(b)
    if on_manifest == "no-reseal":
        m = json.loads((b / MANIFEST).read_text())
        _weaker_limit(m)
        (b / MANIFEST).write_text(json.dumps(m))
    elif on_manifest is not None:
        _reseal(b, on_manifest)
    with pytest.raises(BundleError, match=message) as exc:
        load_bundle(b)
    assert str(b) in str(exc.value), "the message names the file"


def test_a_different_graph_fails_its_known_answers(onnx_bundle, tmp_path):
    other = untrained_checkpoint("ppo", tmp_path / "other", scale=3.0)
    export_checkpoint(other, tmp_path / "other_bundle")
    b = _copy(onnx_bundle, tmp_path)
    shutil.copy(tmp_path / "other_bundle" / ONNX_FILE, b / ONNX_FILE)
    _reseal(b)
    with pytest.raises(BundleError, match="known answers differ"):
        load_bundle(b)


def test_sac_exports_tanh_of_the_mean_within_parity(tmp_path):
    """SAC's greedy action is the squashed mean; weights are scaled up so the mean often leaves [-1, 1]."""
    import torch

    ckpt = untrained_checkpoint("sac", tmp_path / "sac", scale=4.0)
    m = export_checkpoint(ckpt, tmp_path / "bundle")
    assert m["onnx"]["deterministic"] == "tanh(mean)"
    from rllib_configs.policy import load_policy

    module = load_policy(ckpt).module
    z = np.random.default_rng(1).standard_normal((1000, N_FEATURES)).astype(np.float32)
    with torch.no_grad():
        loc = module.forward_inference({"obs": torch.as_tensor(z)})["action_dist_inputs"][:, :3].numpy()
    got = load_bundle(tmp_path / "bundle").make_policy().run_normalised(z)
    np.testing.assert_allclose(got, np.tanh(loc), atol=1e-5, rtol=0)
    assert np.mean(np.abs(loc) > 1.0) > 0.1, "the test needs means outside [-1, 1]"


# --- smoke: a trained policy


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    import ray

    from cluster.local import init_ray
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training

    init_ray(address="local")  # a fresh local Ray even where another one runs on this machine
    try:
        spec = load_train_config(REPO / "rllib_configs" / "export" / "ppo.yaml")
        summary = run_training(
            spec, RunOptions(storage_path=tmp_path_factory.mktemp("runs"), stop_iters=1, seed=3)
        )
    finally:
        ray.shutdown()
    return Path(summary["checkpoint"])


def _simulated_states(n: int) -> np.ndarray:
    from envs.export_env import ExportEnvConfig
    from envs.rollout import make_controller, rollout

    tr = rollout(
        make_controller("pi", 7500),
        ExportEnvConfig(scenario="broken_clouds", episode_s=n, start_s=39600),
        seed=11,
    )
    return tr.obs[:n].astype(np.float64)


@pytest.mark.smoke
def test_trained_policy_onnx_matches_torch_on_1000_states(trained_checkpoint, tmp_path):
    from rllib_configs.policy import load_policy

    export_checkpoint(trained_checkpoint, tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest["training"]["metrics"]["training_iteration"] == 1
    states = _simulated_states(500)
    rng = np.random.default_rng(0)
    states = np.concatenate([states, states * rng.uniform(0.5, 1.5, states.shape)])  # 1,000 states
    torch_a = load_policy(trained_checkpoint).act_unit(states)  # what gridrl evaluate runs
    onnx_policy = bundle.make_policy()
    onnx_a = np.stack([onnx_policy(s) for s in states])
    assert onnx_a.shape == (1000, 3)
    np.testing.assert_allclose(onnx_a, torch_a, atol=1e-5, rtol=0)


@pytest.mark.smoke
def test_export_load_decide_on_the_simulator_for_an_hour(trained_checkpoint, tmp_path):
    """Export -> load -> the edge loop on one simulated hour: no violation, and the same hour as a rollout."""
    from envs.controllers import PolicyController
    from envs.export_env import ExportEnvConfig
    from envs.metrics import metrics_of_record
    from envs.rollout import rollout
    from envs.site import load_site
    from rllib_configs.policy import load_policy
    from serve.edge import EdgeController, SimulatedSite
    from serve.safety import VIOLATIONS

    export_checkpoint(trained_checkpoint, tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    sim = SimulatedSite(None, "broken_clouds", 3600, 43200, seed=21)
    edge = EdgeController(bundle, load_site(None), sim, sim)
    decisions = [edge.step().decision for _ in range(3600)]
    assert sim.done
    assert all(np.all((d.action_w >= 0) & (d.action_w <= 7500.0)) for d in decisions)
    assert not any(c in VIOLATIONS for d in decisions for c in d.checks_fired)
    assert sum(d.source == "policy" for d in decisions) >= 3590  # a loaded host may make an answer late
    import polars as pl

    edge_m = metrics_of_record(
        pl.DataFrame({**sim.frame_columns(), "safety_violation": np.zeros(3600, np.int8)})
    )
    cfg = ExportEnvConfig(scenario="broken_clouds", episode_s=3600, start_s=43200)
    ref = metrics_of_record(
        rollout(PolicyController(load_policy(trained_checkpoint), 7500.0), cfg, seed=21).frame
    )
    assert edge_m["safety_violations"] == 0
    assert edge_m["export_kwh"] == pytest.approx(ref["export_kwh"], rel=0.05, abs=0.02)
    assert edge_m["peak_export_w"] == pytest.approx(ref["peak_export_w"], rel=0.05)
