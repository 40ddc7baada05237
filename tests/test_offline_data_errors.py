"""Bad input gets an error naming the file and the column; a failed build leaves no dataset behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

import offline_data.build as build_mod
from envs.outputs import OutputError
from offline_data.build import BuildConfig, build
from offline_data.generate import GenerateConfig, generate
from offline_data.rawio import RawLogError
from scripts.cli import main

METER_CSV = "meter_readings/date=2025-06-01/part-0.csv"


@pytest.fixture(scope="module")
def raw_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw_template")
    generate(GenerateConfig(days=1, hours=0.1, seed=2), root)
    return root


@pytest.fixture
def raw(raw_template, tmp_path):
    dst = tmp_path / "raw"
    shutil.copytree(raw_template, dst)
    return dst


def _rewrite_meter(raw: Path, fn) -> Path:
    path = raw / METER_CSV
    df = pl.read_csv(path, infer_schema=False)
    fn(df).write_csv(path)
    return path


def test_missing_column_names_file_and_column(raw, tmp_path):
    path = _rewrite_meter(raw, lambda df: df.drop("pv_w_l2"))
    with pytest.raises(RawLogError) as err:
        build(raw, tmp_path / "ds", BuildConfig(), progress=False)
    assert (
        str(path) in str(err.value) and "'pv_w_l2'" in str(err.value) and "missing column" in str(err.value)
    )


def test_wrong_type_names_file_and_column(raw, tmp_path):
    path = _rewrite_meter(raw, lambda df: df.with_columns(pl.lit("high").alias("export_w_l3")))
    with pytest.raises(RawLogError, match="wrong type") as err:
        build(raw, tmp_path / "ds", BuildConfig(), progress=False)
    assert str(path) in str(err.value) and "'export_w_l3'" in str(err.value)


def test_wrong_parquet_type_names_file_and_column(tmp_path):
    generate(GenerateConfig(days=1, hours=0.1, seed=2, fmt="parquet"), tmp_path / "raw")
    path = tmp_path / "raw" / "pi_state" / "date=2025-06-01" / "part-0.parquet"
    df = pl.read_parquet(path)
    df.with_columns(pl.col("integral_w").cast(pl.String)).write_parquet(path)
    with pytest.raises(RawLogError, match="wrong type") as err:
        build(tmp_path / "raw", tmp_path / "ds", BuildConfig(), progress=False)
    assert str(path) in str(err.value) and "'integral_w'" in str(err.value)


def test_empty_inputs_name_the_file(raw, tmp_path):
    path = raw / METER_CSV
    path.write_text("")
    with pytest.raises(RawLogError, match="empty input") as err:
        build(raw, tmp_path / "ds", BuildConfig(), progress=False)
    assert str(path) in str(err.value)
    path.write_text("ts,seq,export_w_l1,export_w_l2,export_w_l3,pv_w_l1,pv_w_l2,pv_w_l3\n")
    with pytest.raises(RawLogError, match="empty input: no data rows") as err:
        build(raw, tmp_path / "ds", BuildConfig(), progress=False)
    assert str(path) in str(err.value)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(RawLogError, match="empty input") as err:
        build(empty, tmp_path / "ds", BuildConfig(), progress=False)
    assert str(empty) in str(err.value)
    shutil.rmtree(raw / "pi_state")
    with pytest.raises(RawLogError, match="missing partition") as err:
        build(raw, tmp_path / "ds", BuildConfig(), progress=False)
    assert "pi_state" in str(err.value)


def test_cli_reports_the_error_and_exits_2(raw, tmp_path, capsys):
    path = _rewrite_meter(raw, lambda df: df.drop("seq"))
    code = main(["data", "build", "--raw", str(raw), "--out", str(tmp_path / "ds"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "'seq'" in err
    code = main(["data", "build", "--raw", str(raw), "--out", str(tmp_path / "ds"), "--split", "0.5,0.5"])
    assert code == 2 and "split" in capsys.readouterr().err


def _fail_while_writing(monkeypatch):
    real = build_mod.transitions

    def boom(steps, date, *args):
        if date == "2025-06-01":
            raise OSError("disk full (simulated)")
        return real(steps, date, *args)

    monkeypatch.setattr(build_mod, "transitions", boom)


def test_failed_build_leaves_no_dataset(raw, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    _fail_while_writing(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        build(raw, out, BuildConfig(), progress=False)
    assert not out.exists()
    assert list(tmp_path.glob(".ds.*")) == []  # no half-built folder left either


def test_failed_rebuild_keeps_the_previous_dataset(raw, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    first = build(raw, out, BuildConfig(), progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _rewrite_meter(raw, lambda df: df.head(df.height - 5))  # a changed day: it is processed again
    _fail_while_writing(monkeypatch)
    with pytest.raises(OSError):
        build(raw, out, BuildConfig(), progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert json.loads((out / "manifest.json").read_text())["created_utc"] == first["created_utc"]
    assert list(tmp_path.glob(".ds.*")) == []


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(raw, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="does not hold a gridrl dataset"):
        build(raw, out, BuildConfig(), progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_a_day_without_commands_is_not_an_error(raw, tmp_path):
    """Header only: nothing was commanded that day; acknowledged power is 0 W after the controller start."""
    path = raw / "zigbee_commands" / "date=2025-06-01" / "part-0.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    m = build(raw, tmp_path / "ds", BuildConfig(), progress=False)
    assert m["counts"]["zigbee_commands"] == {"rows_in": 0, "rows_used": 0, "rows_quarantined": 0}
    assert sum(m["stages"]["transitions"]["rows"].values()) > 0
