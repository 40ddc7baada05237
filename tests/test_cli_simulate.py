"""`gridrl simulate` end to end, through the installed command line."""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl

from envs.metrics import METRICS


def gridrl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_each_has_help():
    top = gridrl("--help")
    assert top.returncode == 0 and "simulate" in top.stdout
    sub = gridrl("simulate", "--help")
    assert sub.returncode == 0 and "--controllers" in sub.stdout and "--seed" in sub.stdout


def test_simulate_writes_metrics_traces_and_plots(tmp_path):
    out = tmp_path / "sim"
    res = gridrl("simulate", "--controllers", "pi,oracle,zero", "--days", "1", "--hours", "2", "--start-h", "11",
                 "--seed", "3", "--out", str(out))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"pi", "oracle", "zero"}
    for m in metrics.values():
        assert set(METRICS) <= set(m)
    assert metrics["oracle"]["export_kwh"] <= metrics["pi"]["export_kwh"] < metrics["zero"]["export_kwh"]
    assert metrics["oracle"]["gap_closed"] == 1.0 and metrics["pi"]["gap_closed"] == 0.0
    for c in metrics:
        assert pl.read_parquet(out / "traces" / f"{c}.parquet").height == 2 * 3600
    assert (out / "day_000.png").stat().st_size > 10_000
    assert "export_kwh" in res.stdout  # the comparison table


def test_simulate_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("name: x\nlatitude_deg: 10\nslaves: []\npv: []\nbogus: 1\n")
    res = gridrl("simulate", "--site", str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "bogus" in res.stderr and str(bad) in res.stderr
    res = gridrl("simulate", "--controllers", "pi,magic", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "magic" in res.stderr
