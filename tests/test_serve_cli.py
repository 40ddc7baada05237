"""Acceptance: ``gridrl serve`` in shadow mode takes a simulated hour of traffic; its logs build a dataset.

Everything through the command line, as on a clean clone: export the rule-based controller as "the
policy", serve it in shadow mode on its own local Ray while a simulated site asks it for targets each
second for a simulated hour, stop (the replicas flush their logs), then ``gridrl data build`` on the raw
logs. The dataset's states, rebuilt from the logs by the offline pipeline, must be the states the server
was asked about, and its actions the targets it sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from envs.actions import to_unit
from envs.site import load_site
from envs.state_spec import EWM_TAU_S, FEATURE_NAMES

REPO = Path(__file__).resolve().parents[1]
WARMUP_S = 70  # the rebuilt features' 60 s windows start at the episode's first second


def gridrl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GRIDRL_SERVE_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "scripts", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.integration
def test_shadow_hour_of_simulated_traffic_builds_into_a_dataset(tmp_path):
    from cluster.head import free_port
    from serve.decision_log import WAL_DIR, read_decisions

    bundle, logs, dataset = tmp_path / "rbc", tmp_path / "logs", tmp_path / "dataset"
    r = gridrl("export", "--controller", "rbc", "--out", str(bundle))
    assert r.returncode == 0, r.stderr[-2000:]
    r = gridrl(
        "serve",
        "--bundle",
        str(bundle),
        "--mode",
        "shadow",
        "--simulate-hours",
        "1",
        "--seed",
        "0",
        "--log-dir",
        str(logs),
        "--port",
        str(free_port()),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    first, last = json.loads(r.stdout.splitlines()[0]), json.loads(r.stdout.strip().splitlines()[-1])
    assert first["url"].startswith("http://127.0.0.1:") and (logs / "admin_token").stat().st_mode & 0o077 == 0
    traffic = last["traffic"]
    assert traffic["requests"] == 3600 and traffic["ok"] == 3600 and traffic["sources"] == {"pi": 3600}
    assert last["decisions"] == 3600
    assert not list((logs / WAL_DIR).glob("*.jsonl")), "the shutdown left write-ahead segments behind"
    decisions = read_decisions(logs, include_wal=False)
    assert decisions.height == 3600 and set(decisions["mode"]) == {"shadow"}
    sent, proposed = (
        np.array(decisions["action_w"].to_list()),
        np.array(decisions["policy_action_w"].to_list()),
    )
    assert np.array_equal(sent, np.array(decisions["pi_action_w"].to_list()))
    assert np.abs(sent - proposed).max() > 100, "the shadow log holds the policy's own proposals"

    raw = logs / "raw" / "sim-site"
    assert [f"gridrl data build --raw {raw} --out {raw}-dataset"] == last["build"]
    r = gridrl("data", "build", "--raw", str(raw), "--out", str(dataset))
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert all(c["rows_quarantined"] == 0 for c in manifest["counts"].values()), manifest["counts"]
    assert manifest["counts"]["pi_state"]["rows_used"] == 3600
    assert sum(s["rows"] for s in manifest["splits"].values()) >= 3590

    steps = pl.concat([pl.read_parquet(dataset / s) for s in ("train", "val", "test")])
    t = steps["time_s"].to_numpy()
    seconds = np.round(decisions["time_s"].to_numpy()).astype(int)
    served = dict(zip(seconds, decisions.iter_rows(named=True), strict=True))
    obs, act = np.array(steps["obs"].to_list()), np.array(steps["actions"].to_list())
    max_w = load_site(None).control.max_power_per_phase_w
    late = t - t.min() > WARMUP_S
    d_obs = np.array([np.abs(o - served[s]["state"]) for o, s in zip(obs[late], t[late], strict=True)])
    # The headroom counters (seconds and kWh since a phase's power became available) count from the
    # episode's first second, so a rebuilt episode that starts later trails by that offset until the next
    # break in availability: at most the warm-up, and its energy at most the warm-up at full power.
    # The 30-minute means (spec v3) also start at the episode's first second: the rebuilt ones start at the
    # readings then and approach the server's as exp(-age / 30 min), from at most the site's PV peak (W) and
    # the clear sky's 1,200 W/m2.
    since = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith(("available_for_s", "acked_kwh_since"))]
    ewm = [FEATURE_NAMES.index(n) for n in ("pv_w_ewm_30min", "clear_sky_ewm_30min_w_m2")]
    own = [i for i in range(len(FEATURE_NAMES)) if i not in since + ewm]
    assert d_obs[:, own].max() < 1e-2, "the rebuilt state vectors are not the ones the server saw"
    assert d_obs[:, since[:3]].max() <= WARMUP_S and d_obs[:, since[3:]].max() <= WARMUP_S * max_w / 3.6e6
    peak = np.array([1e3 * sum(a.kwp for a in load_site(None).pv), 1200.0])
    bound = np.exp(-(t[late] - t.min()) / EWM_TAU_S)[:, None] * peak + 1e-2
    assert (d_obs[:, ewm] <= bound).all(), "the rebuilt 30-minute means do not converge to the server's"
    d_act = np.array([np.abs(a - to_unit(served[s]["action_w"], max_w)) for a, s in zip(act, t, strict=True)])
    assert d_act.max() < 1e-5, "the dataset's actions are not the targets the server sent"
