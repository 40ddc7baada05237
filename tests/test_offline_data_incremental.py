"""Incremental builds: one more day of logs is the only day validated, aligned and featurised again."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

import offline_data.stages as stages_mod
from envs.reward import RewardWeights
from offline_data.build import BuildConfig, build
from offline_data.generate import GenerateConfig, generate


def _spy(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real = stages_mod.validate_partition

    def spy(name, files, date):
        calls.append((name, date))
        return real(name, files, date)

    monkeypatch.setattr(stages_mod, "validate_partition", spy)
    return calls


def _all_rows(out) -> pa.Table:
    m = json.loads((out / "manifest.json").read_text())
    tables = [pq.read_table(out / f) for s in m["splits"].values() for f in s["files"]]
    return pa.concat_tables(tables).sort_by([("time_s", "ascending")])


def test_one_more_day_processes_only_that_day(tmp_path, monkeypatch):
    base = dict(hours=0.25, seed=5, defects=0.02)
    raw, out = tmp_path / "raw", tmp_path / "ds"
    generate(GenerateConfig(days=2, **base), raw)
    calls = _spy(monkeypatch)
    first = build(raw, out, BuildConfig(), progress=False)
    assert sorted({d for _, d in calls}) == ["2025-06-01", "2025-06-02"]
    generate(GenerateConfig(days=3, **base), raw)  # rewrites days 1-2 identically, adds day 3
    calls.clear()
    second = build(raw, out, BuildConfig(), progress=False)
    assert second["days"]["processed"] == ["2025-06-03"]
    assert second["days"]["reused"] == ["2025-06-01", "2025-06-02"]
    assert sorted(calls) == sorted(
        (s, "2025-06-03") for s in ("meter_readings", "pi_state", "zigbee_commands")
    )
    for d in ("2025-06-01", "2025-06-02"):  # reused days carry their counts over unchanged
        assert second["days"]["keys"][d] == first["days"]["keys"][d]
    assert sum(c["rows_in"] for c in second["counts"].values()) > sum(
        c["rows_in"] for c in first["counts"].values()
    )
    # The incremental result is the same dataset a build from scratch gives.
    scratch = build(raw, tmp_path / "scratch", BuildConfig(), progress=False)
    assert scratch["counts"] == second["counts"]
    assert scratch["stages"]["transitions"] == second["stages"]["transitions"]
    assert _all_rows(tmp_path / "scratch").equals(_all_rows(out))


def test_a_changed_day_is_processed_again(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "ds"
    generate(GenerateConfig(days=2, hours=0.25, seed=6), raw)
    build(raw, out, BuildConfig(), progress=False)
    path = raw / "pi_state" / "date=2025-06-01" / "part-0.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-10]))
    calls = _spy(monkeypatch)
    m = build(raw, out, BuildConfig(), progress=False)
    assert m["days"]["processed"] == ["2025-06-01"] and m["days"]["reused"] == ["2025-06-02"]
    assert {d for _, d in calls} == {"2025-06-01"}
    calls.clear()
    m = build(raw, out, BuildConfig(lookahead=3), progress=False)  # lookahead shapes transitions only
    assert m["days"]["processed"] == [] and calls == []
    m = build(raw, out, BuildConfig(reward=RewardWeights(export=2.0)), progress=False)  # rewards are per day
    assert m["days"]["processed"] == ["2025-06-01", "2025-06-02"]


def test_worker_processes_build_the_same_dataset(tmp_path):
    raw = tmp_path / "raw"
    generate(GenerateConfig(days=2, hours=0.25, seed=8, defects=0.02), raw)
    serial = build(raw, tmp_path / "serial", BuildConfig(), progress=False, workers=1)
    pooled = build(raw, tmp_path / "pooled", BuildConfig(), progress=False, workers=2)
    assert pooled["counts"] == serial["counts"] and pooled["stages"] == serial["stages"]
    assert _all_rows(tmp_path / "pooled").equals(_all_rows(tmp_path / "serial"))
