"""``gridrl pipeline``'s report reads the dataset manifest's real keys (the job: scripts/dev.sh main)."""

from __future__ import annotations

import json

from scripts.pipeline import dataset_summary


def test_report_dataset_has_the_manifests_counts_and_transitions(small_dataset):
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    summary = dataset_summary(manifest)
    rows = summary["transitions"]["rows"]
    assert set(rows) == {"train", "val", "test"} and all(isinstance(n, int) and n > 0 for n in rows.values())
    assert sum(rows.values()) == sum(info["rows"] for info in manifest["splits"].values())
    assert summary["counts"] == manifest["counts"]
    assert all(c["rows_used"] > 0 for c in summary["counts"].values())
    json.dumps(summary)  # the report is JSON
