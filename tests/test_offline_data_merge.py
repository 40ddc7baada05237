"""Datasets from several raw folders (``gridrl data build --raw A B``): every row counts once."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline_data.build import BuildConfig, build
from offline_data.generate import GenerateConfig, generate
from offline_data.schemas import STREAMS
from offline_data.split import SPLITS

BASE = dict(hours=0.1, start_hour=11.0, seed=7, scenario="broken_clouds", defects=0.02)


def _transitions(dataset) -> pa.Table:
    tables = [pq.read_table(p) for s in SPLITS for p in sorted((dataset / s).glob("*.parquet"))]
    return pa.concat_tables(tables).sort_by("time_s").select(["time_s", "obs", "actions", "rewards"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A: 06-01..02 of the dithered PI; B: 06-02..03 (06-02 the same bytes as A's); ALL: 06-01..03."""
    root = tmp_path_factory.mktemp("merge")
    dithered = dict(BASE, controller="dithered_pi")
    generate(GenerateConfig(days=2, **dithered), root / "A")
    generate(GenerateConfig(days=2, start_date="2025-06-02", **dithered), root / "B")
    generate(GenerateConfig(days=3, **dithered), root / "ALL")
    build(root / "ALL", root / "ds_all", BuildConfig(), progress=False)
    return root


def test_merged_folders_count_every_row_once(folders):
    root = folders
    whole = json.loads((root / "ds_all" / "manifest.json").read_text())
    merged = build([root / "A", root / "B"], root / "ds", BuildConfig(), progress=False)
    assert merged["counts"] == whole["counts"]
    assert merged["stages"]["transitions"] == whole["stages"]["transitions"]
    assert _transitions(root / "ds").equals(_transitions(root / "ds_all"))
    assert merged["days"]["all"] == ["2025-06-01", "2025-06-02", "2025-06-03"]
    skipped = merged["merge"]["same_content"]
    assert sorted(s["file"].split("/B/")[1] for s in skipped) == sorted(
        f"{s}/date=2025-06-02/part-0.csv" for s in STREAMS
    ), "the day both folders hold is taken once, from A"
    assert merged["merge"]["raw"] == [str((root / "A").resolve()), str((root / "B").resolve())]
    assert list(merged["logging"]["controllers"]) == ["dithered_pi"]
    assert merged["logging"]["controllers"]["dithered_pi"]["days"] == merged["days"]["all"]

    again = build([root / "A", root / "B", root / "A"], root / "ds", BuildConfig(), progress=False)
    assert again["counts"] == whole["counts"]
    assert again["days"]["processed"] == [] and again["days"]["reused"] == merged["days"]["all"]
    assert _transitions(root / "ds").equals(_transitions(root / "ds_all"))
    reverse = build([root / "B", root / "A"], root / "ds_ba", BuildConfig(), progress=False)
    assert reverse["counts"] == whole["counts"]
    assert _transitions(root / "ds_ba").equals(_transitions(root / "ds_all"))


def test_serve_logs_merge_and_the_manifest_says_who_acted(folders, tmp_path):
    """A Serve log folder's raw/<site_id> (here: a day of simulated logs in its place) merges with other
    folders; the manifest counts, from LOG_DIR/decisions, the decisions each source sent per mode."""
    logs = tmp_path / "logs"
    served = logs / "raw" / "sim-site"
    generate(GenerateConfig(days=1, start_date="2025-06-04", **dict(BASE, controller="dithered_pi")), served)
    shutil.rmtree(served / "_logging")  # Serve writes none
    decisions = pl.DataFrame(
        {
            "key": [f"r{i}" for i in range(300)] + ["r0", "x1"],  # r0 again: a retry logged twice
            "site_id": ["sim-site"] * 301 + ["other-site"],
            "mode": ["ab"] * 302,
            "source": ["policy"] * 100 + ["pi"] * 198 + ["fallback"] * 2 + ["policy", "policy"],
        }
    )
    part = logs / "decisions" / "date=2025-06-04" / "part-r1.parquet"
    part.parent.mkdir(parents=True)
    decisions.write_parquet(part)
    m = build([folders / "A", served], tmp_path / "ds", BuildConfig(), progress=False)
    assert m["days"]["all"] == ["2025-06-01", "2025-06-02", "2025-06-04"]
    ab = m["logging"]["controllers"]["serve_ab"]
    assert ab["days"] == ["2025-06-04"] and ab["acted"] == {"fallback": 2, "pi": 198, "policy": 100}
    assert m["logging"]["controllers"]["dithered_pi"]["days"] == ["2025-06-01", "2025-06-02"]
    assert m["logging"]["unrecorded_days"] == []
    alone = build(folders / "A", tmp_path / "ds_a", BuildConfig(), progress=False)
    day = build(served, tmp_path / "ds_s", BuildConfig(), progress=False)
    for stream, c in m["counts"].items():
        assert c["rows_in"] == alone["counts"][stream]["rows_in"] + day["counts"][stream]["rows_in"]
