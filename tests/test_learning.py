"""Learning tests (slow tier, off by default: `bash scripts/dev.sh test -m slow`).

A learning test asks for clearly better than a baseline, not for the optimum.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.profiles import SCENARIOS
from rllib_configs.loader import load_train_config
from rllib_configs.runner import RunOptions, run_training
from scripts.evaluate import evaluate_export

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ppo_beats_the_pi_on_held_out_cloudy_days(tmp_path, ray_session):
    """Within a 15-minute budget on 2 cores, PPO exports less than the PI on held-out cloudy hours.

    The PI-residual PPO (rllib_configs/pi_residual.py): PPO from scratch (ppo.yaml) did not get there in
    18 minutes (see the README's measured standing).
    """
    spec = load_train_config(REPO / "rllib_configs/export/ppo_residual.yaml")
    summary = run_training(spec, RunOptions(storage_path=tmp_path, seed=0, time_budget_s=15 * 60, checkpoint_every=5))
    results = evaluate_export(summary["checkpoint"], tmp_path / "eval", days=2, seed=0, baselines=["pi", "oracle"],
                              scenario="broken_clouds", episode_s=4 * 3600, start_s=10 * 3600)
    print(json.dumps({"summary": summary["metrics"], "metrics": results}, indent=1))
    assert results["policy"]["export_kwh"] < results["pi"]["export_kwh"]
    assert results["policy"]["safety_violations"] == 0


@pytest.mark.slow
def test_ppo_meets_issue_16_targets_on_whole_days_and_unseen_sites(tmp_path, ray_session):
    """Issue 16's targets on a small benchmark suite: the 5 weathers x (the training site + 1 drawn site),
    whole held-out days. PPO supervising the PI (rllib_configs/export/ppo_supervisor.yaml: the PI's dispatch
    preference every 10 minutes, whole days, drawn sites), 15 minutes on 2 cores. gridrl benchmark's verdict
    (scripts/benchmark.py ``targets``) must say every target holds.

    Five weathers, as gridrl benchmark judges: until 2026-12-07 this test judged clear, broken clouds and
    overcast only, where even hindsight's best preference held all day closes 0.24 of the gap, under the 0.25
    target; with summer and winter it closes 0.33 (tests/benchmarks/bench_preferences.py --constant=-1,0,1
    --oracle --seed 7, README "The slow learning test's suite").
    """
    from envs.site_sampler import write_sites
    from scripts.benchmark import cases_table, run_cases, summarise

    spec = load_train_config(REPO / "rllib_configs/export/ppo_supervisor.yaml")
    summary = run_training(spec, RunOptions(storage_path=tmp_path, seed=0, time_budget_s=15 * 60, checkpoint_every=5))
    sites = [None, *[str(p) for p in write_sites(tmp_path / "sites", 1, seed=7)]]
    cases = run_cases(summary["checkpoint"], tmp_path / "bench", sites, list(SCENARIOS), days=1, seed=7,
                      episode_s=86400, start_s=0, jobs=2)  # fmt: skip
    verdict = summarise(cases)
    print(cases_table(cases, verdict))
    missed = [name for name, t in verdict["targets"].items() if not t["ok"]]
    assert verdict["targets_met"], f"missed: {missed}"
