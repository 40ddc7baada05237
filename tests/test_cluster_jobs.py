"""`ray job submit` against a real local head (127.0.0.1, Ray 2.60 token auth on), stopped by its own PID."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import pytest

from cluster.head import LocalHead

REPO = Path(__file__).resolve().parents[1]


def wait_for_job(head: LocalHead, job_id: str, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        res = head.ray("job", "status", "--address", head.address, job_id, timeout=60)
        status = (res.stdout + res.stderr).upper()
        for final in ("SUCCEEDED", "FAILED", "STOPPED"):
            if final in status:
                return final
        time.sleep(3)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s} s: {status[-300:]}")


# slow tier for CI's time budget (79 s: two `ray start`s, a job's working-dir upload and runtime env): the
# default suite took 1,249 s on 2 cores here on 2026-12-06, 992 s in CI. Run it with -m slow before
# touching cluster/head.py or the job path.
@pytest.mark.slow
@pytest.mark.integration
def test_train_job_with_token_succeeds_and_without_token_is_refused(tmp_path):
    storage = tmp_path / "runs"
    head = LocalHead(tmp_path / "head")
    # Another process holds one of the ports picked for the head: its `ray start` exits, and the head
    # is started again on fresh ports (what a loaded CI machine once did to this test).
    busy = socket.create_server(("127.0.0.1", head.extra_ports["ray-client-server-port"]))
    with busy, head:
        first = (tmp_path / "head" / "head.1.log").read_text()
        assert "Failed to bind" in first, first[-2000:]
        refused = head.ray("job", "submit", "--address", head.address, "--no-wait", "--", "true",
                           with_token=False)
        assert refused.returncode != 0
        assert "auth" in (refused.stdout + refused.stderr).lower()

        sub = head.ray(
            "job", "submit", "--address", head.address, "--working-dir", str(REPO), "--no-wait", "--",
            "python", "-m", "scripts", "train", "--config", "rllib_configs/export/ppo.yaml",
            "--stop-iters", "2", "--storage-path", str(storage), cwd=REPO,
        )
        assert sub.returncode == 0, sub.stderr[-2000:]
        job_id = re.search(r"raysubmit_\w+", sub.stdout + sub.stderr).group(0)
        status = wait_for_job(head, job_id)
        logs = head.ray("job", "logs", "--address", head.address, job_id).stdout
        assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads([ln for ln in logs.splitlines() if ln.startswith("{")][-1])
    assert summary["metrics"]["training_iteration"] == 2
    assert Path(summary["checkpoint"]).is_dir()
    assert Path(summary["checkpoint"]).is_relative_to(storage)
    assert head.proc is not None and head.proc.poll() is not None, "the head was not stopped"
