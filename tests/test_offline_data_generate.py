"""The raw-log generator: clocks and acknowledgements as documented, determinism per day, config errors."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from envs.config import ConfigError, from_mapping
from envs.simulator import EV_APPLIED, EV_SENT
from envs.site import load_site
from offline_data.generate import GenerateConfig, generate, simulate_day
from offline_data.schemas import STREAMS, arrow_schema, markdown_table


@pytest.fixture(scope="module")
def day():
    cfg = GenerateConfig(days=1, hours=0.5, start_hour=12.0, seed=4, scenario="broken_clouds")
    trace, streams = simulate_day(cfg, load_site(None), dt.date(2025, 6, 1))
    return cfg, trace, streams


def test_clocks_follow_the_documented_offsets(day):
    _, trace, streams = day
    t0 = int(trace.time0)
    meter, pi = streams["meter_readings"], streams["pi_state"]
    off = meter["ts_ms"].to_numpy() - meter["__s"].to_numpy() * 1000
    assert np.abs(off).max() <= 100
    assert (np.diff(meter["seq"].to_numpy()) >= 1).all()
    missing = np.isnan(trace.frame["meter_export_w_l1"].to_numpy()[:-1]).sum()
    assert meter.height == trace.frame.height - missing  # a lost reading has no row
    off = pi["ts_ms"].to_numpy() - pi["__s"].to_numpy() * 1000
    assert off.min() >= 350 and off.max() < 450
    assert pi["cycle"][0] == 0 and pi["__s"][0] == t0


def test_acknowledgements_land_in_the_second_before_the_state_shows_them(day):
    _, trace, streams = day
    t0 = int(trace.time0)
    cmds = streams["zigbee_commands"]
    ev = trace.events
    ack = cmds["ack_ts_ms"].to_numpy()
    applied = ev[:, EV_APPLIED]
    has = applied >= 0
    assert (np.isnan(ack.astype(float)) == ~has).all()
    a = (t0 + applied[has]) * 1000
    assert ((ack[has] > a - 1000) & (ack[has] <= a)).all()
    assert (cmds["ts_ms"].to_numpy() // 1000 == t0 + ev[:, EV_SENT]).all()
    # Retries resend the same value; the other commands are exactly the simulator's command changes.
    changes = cmds.filter(~pl.col("retry")).group_by("__s").len()
    per_second = dict(changes.iter_rows())
    frame_changes = trace.frame["command_changes"].to_numpy()
    for k, n in enumerate(frame_changes):
        assert per_second.get(t0 + k, 0) == n


def test_a_day_depends_only_on_seed_and_date(tmp_path):
    """Generating more days rewrites the earlier ones byte for byte (what incremental builds rely on)."""
    base = dict(hours=0.25, seed=9, defects=0.05)
    generate(GenerateConfig(days=2, **base), tmp_path / "a")
    generate(GenerateConfig(days=1, start_date="2025-06-02", **base), tmp_path / "b")
    for stream in STREAMS:
        a = (tmp_path / "a" / stream / "date=2025-06-02" / "part-0.csv").read_bytes()
        b = (tmp_path / "b" / stream / "date=2025-06-02" / "part-0.csv").read_bytes()
        assert a == b, stream
    side_a = (tmp_path / "a" / "_defects" / "date=2025-06-02.jsonl").read_text()
    assert side_a == (tmp_path / "b" / "_defects" / "date=2025-06-02.jsonl").read_text()
    assert all(json.loads(line)["file"].endswith(".csv") for line in side_a.splitlines())


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("days", 0, "days"),
        ("start_date", "2024-12-31", "start_date"),
        ("hours", 30.0, "hours"),
        ("defects", 0.5, "defects"),
        ("fmt", "xml", "fmt"),
    ],
)
def test_generate_config_errors_name_the_field(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_mapping(GenerateConfig, {field: value}, source="command line")


def test_schemas_are_documented():
    for stream in STREAMS.values():
        schema = arrow_schema(stream)
        assert schema.names == list(stream.names)
        table = markdown_table(stream)
        for c in stream.columns:
            assert f"`{c.name}`" in table and c.description and c.unit
