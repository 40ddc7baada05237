"""``gridrl pipeline --profile tiny``: the main job itself, every stage at its smallest, end to end.

It runs as the user runs it (a subprocess, an embedded local Ray on 2 CPUs) and checks what the job promises:
a line per stage and no library's lines on the console, the ``shipped`` record in the last JSON line and in
report.json, a bundle of the shipped controller (``controller: pi`` when the rule refused the policy, ``onnx``
when it promoted it) and a shadow run that served that bundle. In the default tier, so CI runs the main job
(issue 17): 54 s of `gridrl pipeline --profile tiny` on 2 quiet cores (Ray, one RLlib algorithm, the forward
model's Tune trial and Ray Serve start; the stages' own work is seconds).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# what Ray, RLlib, Tune, Serve and their workers write, and Python's warnings
NOISE = re.compile(r"WARNING|Warning|warn\(|\((pid|raylet|\w+ pid)=|^[│╭╰├]|INFO |Traceback|it/s\]")


def test_tiny_pipeline_ships_what_the_rule_decided(tmp_path):
    out = tmp_path / "pipe"
    res = subprocess.run(
        [sys.executable, "-m", "scripts", "pipeline", "--profile", "tiny", "--out", str(out), "--seed", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:] + (out / "pipeline.log").read_text()[-3000:]
    progress = [line for line in res.stderr.splitlines() if line.startswith("[pipeline] ")]
    assert len(progress) == 9 and progress[-1].startswith("[pipeline] 9/9 shadow run of the shipped")
    # a console a person can read: stderr holds the progress lines alone, stdout no library's lines (Ray's
    # and RLlib's warnings, Tune's boxes, workers' "(pid=...)" lines): those are in the logs the summary names
    assert res.stderr.splitlines() == progress, res.stderr[-3000:]
    noise = [line for line in res.stdout.splitlines() if NOISE.search(line)]
    assert not noise, noise[:10]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    shipped = summary["shipped"]
    assert shipped["controller"] in ("policy", "pi") and shipped["reason"]
    assert report["shipped"]["controller"] == shipped["controller"]
    assert report["shipped"]["reason"] == shipped["reason"]
    verdict = report["promotion"]["simulator"]
    assert verdict["promoted"] is (shipped["controller"] == "policy")
    assert shipped["reason"].startswith(verdict["reason"]) and "validation day" in shipped["reason"]
    assert f"shipped: {'the offline supervisor' if verdict['promoted'] else 'the PI'}: " in res.stdout
    assert len(verdict["cases"]) == report["settings"]["promotion_days"]
    # the forward model's verdict, for information, carries its trust: a one-iteration model is not trusted
    assert report["promotion"]["forward_model"]["trust"] < 1.0
    assert all(m["trust"] < 1.0 for n, m in report["model_based"].items() if n != "logged_pi")
    # the bundle is the shipped controller's, and the shadow stage served that bundle
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["controller"] == ("onnx" if shipped["controller"] == "policy" else "pi")
    control = json.loads((out / "serve" / "control.json").read_text())
    assert Path(control["bundle"]).resolve() == (out / "bundle").resolve() and control["mode"] == "shadow"
    assert report["shadow"]["traffic"]["ok"] == report["shadow"]["traffic"]["requests"] > 0
