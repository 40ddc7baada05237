"""The edge runtime: no Ray or torch, the simulator's own features and dispatch, the decision log, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from envs.export_env import ExportEnvConfig
from envs.metrics import METRICS
from envs.rollout import rollout
from envs.site import load_site
from serve.bundle import BundleError, export_baseline, export_checkpoint, load_bundle
from serve.edge import DecisionLog, EdgeController, SimulatedSite, run_simulated
from tests.test_bundle import untrained_checkpoint

REPO = Path(__file__).resolve().parents[1]
# The soft limits off, and a deadline no stall of a loaded host reaches: runs must be exactly reproducible.
NO_LIMITS = {"max_rate_w_per_s": None, "max_phase_spread_w": None, "policy_deadline_s": 60.0}


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edge_onnx")
    export_checkpoint(untrained_checkpoint("ppo", root / "module"), root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def pi_bundle(tmp_path_factory) -> Path:
    """The PI with the soft limits off: the edge loop must then reproduce the simulator's PI exactly."""
    path = tmp_path_factory.mktemp("edge_pi") / "bundle"
    export_baseline("pi", path, safety=NO_LIMITS)
    return path


_ISOLATION = """
import json, sys
import serve.edge as edge
from envs.site import load_site
bundle = edge.load_bundle(sys.argv[1])
sim = edge.SimulatedSite(None, "broken_clouds", 120, 43200, seed=1)
ctl = edge.EdgeController(bundle, load_site(None), sim, sim)
steps = [ctl.step() for _ in range(120)]
assert sum(s.decision.source == "policy" for s in steps) > 100  # a loaded host may make an answer late
assert not any(c in edge.VIOLATIONS for s in steps for c in s.decision.checks_fired)
print(json.dumps({m: m in sys.modules for m in ("ray", "torch", "onnxruntime", "numba")}))
"""


@pytest.mark.parametrize("no_jit", ["0", "1"])
def test_edge_imports_neither_ray_nor_torch(onnx_bundle, no_jit):
    env = {**os.environ, "GRIDRL_NO_JIT": no_jit, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _ISOLATION, str(onnx_bundle)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["ray"] is False and loaded["torch"] is False
    assert loaded["onnxruntime"] is True, "the ONNX policy ran"
    if no_jit == "1":
        assert loaded["numba"] is False


def test_edge_loop_reproduces_the_simulated_pi_to_the_bit(pi_bundle):
    """Own features (feature_row on the meter's readings), own dispatch, float32 state: as the env."""
    from envs.controllers import PIController

    sim = SimulatedSite(None, "broken_clouds", 3600, 36000, seed=4)
    # A fake timer: on a loaded host a late answer would (rightly) hand one step to the fallback PI.
    edge = EdgeController(load_bundle(pi_bundle), load_site(None), sim, sim, timer=lambda: 0.0)
    states = np.stack([edge.step().state for _ in range(3600)])
    ref = rollout(
        PIController(), ExportEnvConfig(scenario="broken_clouds", episode_s=3600, start_s=36000), seed=4
    )
    np.testing.assert_array_equal(states, ref.obs[:-1].astype(np.float64))
    mine = pl.DataFrame(sim.frame_columns())
    for col in ("export_w_l1", "export_w_l2", "export_w_l3", "ctrl_w_l2", "target_w_l1", "command_changes"):
        np.testing.assert_array_equal(mine[col].to_numpy(), ref.frame[col].to_numpy(), err_msg=col)


def test_edge_commands_are_the_ones_the_simulator_sends(onnx_bundle):
    """The edge's dispatch (envs/dispatch.py) agrees with the simulator's: every changed command sent."""
    from envs.simulator import EV_SENT, EV_SLAVE, EV_VALUE

    sim = SimulatedSite(None, "broken_clouds", 1800, 43200, seed=9, record_events=True)
    edge = EdgeController(load_bundle(onnx_bundle), load_site(None), sim, sim)
    for _ in range(1800):
        edge.step()
    events = sim.sim.events[0, : sim.sim.n_events[0]]
    last = {}
    changed = 0
    for ev in events:
        t, s, v = int(ev[EV_SENT]), int(ev[EV_SLAVE]), ev[EV_VALUE]
        if last.get(s) != v:  # a retry repeats the last value; a change carries the new command
            assert v == sim.commands[t, s], (t, s)
            changed += 1
        last[s] = v
    assert changed > 10


def test_decision_log_rotates_and_every_line_is_json(pi_bundle, tmp_path):
    log = DecisionLog(tmp_path / "decisions.jsonl", max_bytes=20_000, backups=2)
    sim = SimulatedSite(None, "clear", 600, 43200, seed=2)
    edge = EdgeController(load_bundle(pi_bundle), load_site(None), sim, sim, log)
    for _ in range(600):
        edge.step()
    log.close()
    files = sorted(tmp_path.glob("decisions.jsonl*"))
    assert [f.name for f in files] == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    assert all(f.stat().st_size <= 20_000 for f in files)
    rows = [json.loads(line) for line in (tmp_path / "decisions.jsonl.1").read_text().splitlines()]
    assert rows and {"time_s", "source", "checks", "action_w", "commands_w"} <= set(rows[0])
    assert len(rows[0]["commands_w"]) == len(load_site(None).slaves)


def test_run_simulated_writes_simulate_format_and_counts(pi_bundle, tmp_path):
    res = run_simulated(pi_bundle, tmp_path, [5], episode_s=900, start_s=45000, progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == {"pi"} and set(on_disk["pi"]) == set(METRICS)
    assert {k: v for k, v in on_disk["pi"].items() if k != "gap_closed"} == {
        k: v for k, v in res["pi"].items() if k != "gap_closed"
    }
    assert {"export_kwh", "peak_export_w", "safety_violations", "fallback_activations"} <= set(on_disk["pi"])
    assert on_disk["pi"]["safety_violations"] == 0
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["decisions"] == 900 and checks["sources"] == {"policy": 900}
    assert pl.read_parquet(tmp_path / "traces" / "pi.parquet").height == 900


def test_a_bundle_for_another_action_bound_is_refused(pi_bundle, tmp_path):
    text = (
        (REPO / "envs" / "sites" / "default.yaml")
        .read_text()
        .replace("max_power_per_phase_w: 7500.0", "max_power_per_phase_w: 5000.0")
    )
    site_file = tmp_path / "small.yaml"
    site_file.write_text(text)
    with pytest.raises(BundleError, match="max_power_per_phase_w = 5000.0 W") as exc:
        run_simulated(pi_bundle, tmp_path / "out", [0], str(site_file), episode_s=60, start_s=43200)
    assert str(site_file) in str(exc.value)
    sim = SimulatedSite(str(site_file), "clear", 60, 43200, seed=0)
    with pytest.raises(BundleError, match="max_power_per_phase_w = 5000.0 W"):
        EdgeController(load_bundle(pi_bundle), load_site(site_file), sim, sim)


def _gridrl(*args: str, no_jit: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRIDRL_NO_JIT": "1" if no_jit else "0"}
    return subprocess.run(
        [sys.executable, "-m", "scripts", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_runs_without_numba_and_gives_the_same_metrics(pi_bundle, tmp_path):
    args = ["edge", "--bundle", str(pi_bundle), "--hours", "0.25", "--start-h", "11", "--seed", "3"]
    jit = _gridrl(*args, "--out", str(tmp_path / "jit"))
    plain = _gridrl(*args, "--out", str(tmp_path / "plain"), no_jit=True)
    assert jit.returncode == 0 and plain.returncode == 0, plain.stderr[-2000:]
    a = json.loads((tmp_path / "jit" / "metrics.json").read_text())["pi"]
    b = json.loads((tmp_path / "plain" / "metrics.json").read_text())["pi"]
    assert b == pytest.approx(a, rel=1e-6, abs=1e-9, nan_ok=True)  # gap_closed is NaN without an oracle run


def test_cli_errors_name_the_file(tmp_path):
    out = _gridrl("edge", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and str(tmp_path / "nope" / "manifest.json") in out.stderr
    out = _gridrl("export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "b"))
    assert out.returncode == 2 and str(tmp_path / "nope") in out.stderr
    limits = tmp_path / "limits.yaml"
    limits.write_text("max_rate_w_per_s: 2000.0\nmax_rate: 5\n")
    out = _gridrl("export", "--controller", "pi", "--safety", str(limits), "--out", str(tmp_path / "b"))
    assert out.returncode == 2 and f"{limits}: field 'max_rate': unknown key" in out.stderr
    limits.write_text("max_rate_w_per_s: 2000.0\n")
    out = _gridrl("export", "--controller", "pi", "--safety", str(limits), "--out", str(tmp_path / "b"))
    assert out.returncode == 0, out.stderr
    assert load_bundle(json.loads(out.stdout.splitlines()[-1])["bundle"]).limits.max_rate_w_per_s == 2000.0
