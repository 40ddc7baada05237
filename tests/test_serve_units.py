"""The policy server's parts without Ray: routing, rollback triggers, sessions, the log, the control state.

Unit tier (seconds). The same code runs inside the Serve replicas of tests/test_serve.py; here it is
driven directly, with simulator states, so the triggers that need minutes of traffic are tested too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from envs.config import ConfigError
from envs.controllers import PIController
from envs.export_env import ExportEnvConfig
from envs.rollout import rollout
from envs.state_spec import FEAT, FEATURE_NAMES, N_FEATURES, SPEC_VERSION
from serve.api import ActRequest, parse_state
from serve.bundle import export_baseline, load_bundle
from serve.config import ABSchedule, RollbackConfig, ServeConfig
from serve.decision_log import compact_orphans, compact_segment, read_decisions
from serve.modes import ab_policy_acts, policy_acts, rollout_bucket
from serve.rollback import RollbackMonitor
from serve.server import PolicyService
from serve.session import SiteSession

REPO = Path(__file__).resolve().parents[1]
NO_LIMITS = {"max_rate_w_per_s": None, "max_phase_spread_w": None, "policy_deadline_s": 60.0}


@pytest.fixture(scope="module")
def trace():
    return rollout(
        PIController(), ExportEnvConfig(scenario="broken_clouds", episode_s=600, start_s=36_000), 5
    )


@pytest.fixture(scope="module")
def pi_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("units") / "pi"
    export_baseline("pi", path, safety=NO_LIMITS)
    return path


# --- routing


def test_rollout_buckets_are_stable_uniform_and_only_grow():
    keys = [f"site-{i}" for i in range(2000)]
    b = np.array([rollout_bucket(k, "s") for k in keys])
    assert np.array_equal(b, [rollout_bucket(k, "s") for k in keys])
    assert 0.22 < np.mean(b < 25) < 0.28 and 0.72 < np.mean(b < 75) < 0.78
    assert set(np.flatnonzero(b < 25)) <= set(np.flatnonzero(b < 50)) <= set(np.flatnonzero(b < 100))
    assert np.all(b < 100) and not np.array_equal(b, [rollout_bucket(k, "other") for k in keys])


def test_ab_schedule_by_weekday_and_local_hour():
    monday_10_utc = 1748858400.0  # 2025-06-02 10:00 UTC, a Monday
    alt = ABSchedule()
    assert [ab_policy_acts(alt, monday_10_utc + h * 3600) for h in range(4)] == [True, False, True, False]
    assert ab_policy_acts(alt, monday_10_utc + 86400) is False, "shifted by one the next day"
    sched = ABSchedule(utc_offset_h=2.0, policy_hours={"mon": [12, 13]})
    assert [ab_policy_acts(sched, monday_10_utc + h * 3600) for h in range(4)] == [True, True, False, False]
    with pytest.raises(ConfigError, match="policy_hours"):
        ServeConfig.from_args({"bundle": "b", "ab": {"policy_hours": {"monday": [1]}}})
    common = dict(rollout_pct=100.0, rollout_key="k", salt="s", schedule=alt, time_s=monday_10_utc)
    assert policy_acts("production", rolled_back=False, **common)
    assert not policy_acts("production", rolled_back=True, **common), "a rollback beats every mode"
    assert not policy_acts("shadow", rolled_back=False, **common)


def test_config_errors_name_the_key_and_the_cluster_args_parse():
    import yaml

    with pytest.raises(ConfigError, match="rollout_percent"):
        ServeConfig.from_args({"bundle": "b", "rollout_percent": 5})
    with pytest.raises(ConfigError, match="rollout_pct"):
        ServeConfig.from_args({"bundle": "b", "rollout_pct": 150})
    with pytest.raises(ConfigError, match="mode"):
        ServeConfig.from_args({"bundle": "b", "mode": "yolo"})
    args = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())["applications"][0]["args"]
    cfg = ServeConfig.from_args(args)
    assert cfg.mode == args["mode"] and cfg.bundle == args["bundle"]


def test_a_state_by_name_equals_the_vector(trace):
    x = trace.obs[100].astype(np.float64)
    by_name, named = parse_state(dict(zip(FEATURE_NAMES, x.tolist(), strict=True)))
    by_vec, _ = parse_state(x.tolist())
    assert named and np.array_equal(by_name, by_vec)
    req = ActRequest.model_validate({"state": x.tolist(), "spec_version": SPEC_VERSION})
    assert np.array_equal(req.vector(), x)


# --- rollback triggers


def _record(
    mon: RollbackMonitor, t: float, site: str, acted: bool, checks=(), change=False, exp=0.0, pv=1000.0
):
    prev = np.zeros(3)
    sent = np.full(3, 500.0) if change else prev
    mon.record(t, site, acted, tuple(checks), np.zeros(30), sent, prev, exp, pv)


def test_violation_and_anomaly_trigger_at_once_and_expire_with_the_window():
    mon = RollbackMonitor(RollbackConfig(window_s=60))
    for k in range(10):
        _record(mon, k, "a", True)
    assert mon.check(10) is None
    _record(mon, 11, "a", True, ["policy_output"])
    assert mon.check(11)[0] == "violation"
    assert mon.check(200) is None, "out of the window"
    _record(mon, 201, "a", False, ["anomaly"])
    assert mon.check(201) is None, "the PI was acting: not the policy's anomaly"
    _record(mon, 202, "a", True, ["anomaly"])
    trigger, detail = mon.check(202)
    assert trigger == "anomaly" and detail["anomalies"] == 1


def test_oscillation_triggers_above_the_change_rate():
    cfg = RollbackConfig(window_s=600, min_policy_decisions=120, max_changes_per_min=10)
    mon = RollbackMonitor(cfg)
    for k in range(300):
        _record(mon, k, "a", True, change=k % 10 == 0)  # 6 changes per minute
    assert mon.check(300) is None
    for k in range(300, 600):
        _record(mon, k, "a", True, change=k % 3 == 0)  # 20 per minute
    trigger, detail = mon.check(600)
    assert trigger == "oscillation" and detail["changes_per_min"] > 10


def test_export_trigger_compares_the_policys_export_share_with_the_pis():
    cfg = RollbackConfig(
        window_s=600, min_policy_decisions=100, min_baseline_decisions=100, export_worse_pct=5
    )
    mon = RollbackMonitor(cfg)
    for k in range(300):  # shadow: the PI exports 10 % of PV
        _record(mon, k, "a", False, exp=100.0, pv=1000.0)
    assert mon.baseline_share(300) == (pytest.approx(0.1), 299)  # the first request follows nothing
    for k in range(300, 500):  # the policy: 10.4 % (4 % worse): no trigger
        _record(mon, k, "a", True, exp=104.0, pv=1000.0)
    assert mon.check(500) is None
    for k in range(500, 1200):  # then 12 % (20 % worse)
        _record(mon, k, "a", True, exp=120.0, pv=1000.0)
    trigger, detail = mon.check(1200)
    assert trigger == "export" and detail["worse_pct"] == pytest.approx(20.0, abs=0.5)
    fixed = RollbackMonitor(RollbackConfig(baseline_export_share=0.5, min_policy_decisions=100))
    for k in range(200):
        _record(fixed, k, "a", True, exp=120.0, pv=1000.0)
    assert fixed.check(200) is None, "12 % is better than a 50 % baseline"


# --- sessions


def _serve_episode(sessions: list[SiteSession], trace, routed: bool) -> np.ndarray:
    out = []
    for k in range(len(trace.obs) - 1):
        x = trace.obs[k].astype(np.float64)
        out.append(sessions[k % len(sessions)].decide(x, trace.time0 + k, routed).sent_w)
    return np.array(out)


def test_a_pi_bundle_served_through_a_session_is_the_simulated_pi(trace, pi_bundle):
    """Served on the states the PI saw, the session gives the PI's targets to the bit (policy gate) ..."""
    bundle = load_bundle(pi_bundle)
    want = trace.frame.select(f"target_w_l{p}" for p in (1, 2, 3)).to_numpy()
    got = _serve_episode([SiteSession(bundle)], trace, routed=True)
    np.testing.assert_array_equal(got, want)
    # ... through the PI gate (shadow: the PI acts)
    np.testing.assert_array_equal(_serve_episode([SiteSession(bundle)], trace, routed=False), want)
    # ... and, resuming from the state at every request, as two replicas taking turns would
    two = _serve_episode([SiteSession(bundle), SiteSession(bundle)], trace, routed=True)
    assert np.max(np.abs(two - want)) < 0.05


# --- the log and the control state


def _service(tmp: Path, bundle: Path, replica: str, **extra) -> PolicyService:
    cfg = ServeConfig.from_args(
        {
            "bundle": str(bundle),
            "log_dir": str(tmp),
            "admin_token_sha256": "0" * 64,
            "log": {"flush_interval_s": 3600, "fsync_interval_s": 0},
            **extra,
        }
    )
    return PolicyService(cfg, replica)


def _req(trace, k: int, site: str = "s", **extra) -> ActRequest:
    return ActRequest.model_validate(
        {
            "state": trace.obs[k].astype(float).tolist(),
            "spec_version": SPEC_VERSION,
            "site_id": site,
            "time_s": trace.time0 + k,
            "request_id": f"{site}-{k}",
            **extra,
        }
    )


def test_a_killed_writers_segment_is_compacted_once_and_a_torn_line_is_skipped(tmp_path, trace, pi_bundle):
    a = _service(tmp_path, pi_bundle, "rep-a")
    b = _service(tmp_path, pi_bundle, "rep-b")
    for k in range(20):
        a.act(_req(trace, k, "x"))
        b.act(_req(trace, k, "y"))
    assert b.act(_req(trace, 3, "y")) == b.act(_req(trace, 3, "y")), "a retry gets the same answer"
    assert compact_orphans(tmp_path) == 0, "live writers' segments are not touched"
    seg_a = a.log._path
    with open(seg_a, "ab") as f:
        f.write(b'{"key": "torn", "site_id": "x", "time_')  # a write cut short by the kill
    os.close(a.log._fd)  # a dies: its lock goes with it
    a.log._stop.set()
    assert compact_orphans(tmp_path) == 20
    assert not seg_a.exists()
    keys = read_decisions(tmp_path, include_wal=True)["key"].to_list()
    assert len(keys) == 40 and len(set(keys)) == 40 and "torn" not in keys
    b.close()
    df = read_decisions(tmp_path, include_wal=False)
    assert df.height == 40 and set(df["replica"]) == {"rep-a", "rep-b"}


def test_compaction_is_idempotent(tmp_path, trace, pi_bundle):
    svc = _service(tmp_path / "svc", pi_bundle, "r")
    for k in range(5):
        svc.act(_req(trace, k))
    seg = tmp_path / "copy.jsonl"
    seg.write_bytes(svc.log._path.read_bytes())  # the segment as a dead replica would leave it
    svc.close()
    out = tmp_path / "out"
    assert compact_segment(seg, out) == 5
    assert compact_segment(seg, out) == 5  # e.g. a sweeper killed before it deleted the segment
    assert read_decisions(out, include_wal=False).height == 5
    files = sorted((out / "raw" / "s").rglob("*.parquet"))
    assert len(files) == 3, "one file per stream, rewritten in place"


def test_control_state_is_shared_survives_a_restart_and_a_new_deploy_starts_afresh(
    tmp_path, trace, pi_bundle
):
    a = _service(tmp_path, pi_bundle, "a", mode="production", control_poll_s=0.0)
    b = _service(tmp_path, pi_bundle, "b", mode="production", control_poll_s=0.0)
    assert b.act(_req(trace, 1))["source"] == "policy"
    a.roll_back("violation", {"violations": 1}, by="test")
    r = b.act(_req(trace, 2))
    assert r["source"] == "pi" and r["rolled_back"], "the other replica follows the rollback"
    b.close()
    b2 = _service(tmp_path, pi_bundle, "b2", mode="production", control_poll_s=0.0)
    assert b2.act(_req(trace, 3))["rolled_back"], "a restarted replica keeps the rollback"
    b2.set_mode("rollout", 100.0, "re-arm", by="test")
    assert a.act(_req(trace, 4))["source"] == "policy"
    b2.close()
    c = _service(tmp_path, pi_bundle, "c", mode="shadow", control_poll_s=0.0)
    state = c.store.read()
    assert state["mode"] == "shadow" and state["rolled_back"] is None, "another deploy starts afresh"
    assert [h["event"] for h in state["history"]] == ["deployed", "rollback", "set_mode", "deployed"]
    a.close()
    c.close()


def test_a_shadow_decision_logs_both_proposals(tmp_path, trace, pi_bundle):
    rbc = tmp_path / "rbc"
    export_baseline("rbc", rbc)
    svc = _service(tmp_path / "log", rbc, "r")
    for k in range(120):
        assert svc.act(_req(trace, k))["source"] == "pi"
    svc.close()
    df = read_decisions(tmp_path / "log")
    sent = np.array(df["action_w"].to_list())
    pol = np.array(df["policy_action_w"].to_list())
    pi = np.array(df["pi_action_w"].to_list())
    assert np.array_equal(sent, pi) and not np.array_equal(sent, pol), "the policy's proposals are logged"
    assert set(df["mode"]) == {"shadow"} and not df["policy_acted"].any()
    assert df["state"].list.len().unique().to_list() == [N_FEATURES]
    assert np.allclose(np.array(df["state"].to_list())[:, FEAT["pv_w"]], trace.obs[:120, FEAT["pv_w"]])
