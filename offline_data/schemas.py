"""Schemas of the three raw-log streams of the export domain: columns, types, units, meaning.

Real sites log three streams from three devices, each with its own clock:

* ``meter_readings``: the grid and PV meters, about once a second;
* ``zigbee_commands``: one row per command the master controller sent to a controllable load
  ("slave"), with the time its acknowledgement came back, or none;
* ``pi_state``: one row per cycle of the PI controller (once a second, on the controller's clock).

A stream is a folder of day partitions, ``RAW/<stream>/date=YYYY-MM-DD/*.{csv,parquet,jsonl}`` (the
logger's day). Text formats (CSV with a header row, JSON Lines with one object per line) hold numbers in
full precision and timestamps as RFC 3339 UTC strings (``2025-06-01T09:00:00.123Z``); Parquet holds the
types below (timestamps as ``timestamp[ms, UTC]``, or RFC 3339 strings). Columns not listed are ignored.
:data:`STREAMS` is the one definition; the README's table is generated from it
(:func:`markdown_table`), and the generator writes exactly these columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from envs.tables import format_table

SCHEMA_VERSION = "raw-logs-v1"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"  # how text formats write timestamps (UTC, milliseconds)
PHASES = (1, 2, 3)


@dataclass(frozen=True)
class Column:
    """One column of a raw stream.

    Attributes:
        name: Column name, exactly as in the file's header / JSON keys / Parquet schema.
        kind: ``timestamp``, ``float``, ``int``, ``bool`` or ``string``.
        unit: Physical unit (``W``, ``s``) or ``-``.
        description: What the value means, including when it may be empty.
        nullable: An empty value is allowed (otherwise the row is quarantined).
    """

    name: str
    kind: str
    unit: str
    description: str
    nullable: bool = False


@dataclass(frozen=True)
class Stream:
    """A raw-log stream: its name, the device that writes it and its columns."""

    name: str
    description: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def of_kind(self, *kinds: str) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind in kinds)


def _ts(event: str, clock: str) -> Column:
    """The ``ts`` column of every stream: when ``event`` happened, on the clock of the device that logs it."""
    return Column("ts", "timestamp", "-", f"time {event} ({clock} clock, UTC)")


def _per_phase(prefix: str, unit: str, text: str) -> tuple[Column, ...]:
    return tuple(Column(f"{prefix}_l{p}", "float", unit, f"{text}, phase {p}") for p in PHASES)


METER = Stream(
    "meter_readings",
    "Grid and PV meters: one row per reading, about 1 Hz, on the meter's clock. A reading that never "
    "reached the logger has no row (its counter value is skipped).",
    (
        _ts("the reading was taken", "meter"),
        Column("seq", "int", "-", "reading counter of the meter: +1 per reading taken, lost ones included"),
        *_per_phase("export_w", "W", "grid meter active power, export positive (import negative)"),
        *_per_phase("pv_w", "W", "PV meter active power"),
    ),
)

COMMANDS = Stream(
    "zigbee_commands",
    "Master controller: one row per command sent to a slave over Zigbee, at irregular times, with the "
    "time the slave's acknowledgement arrived, or none (command lost, or superseded by a newer one).",
    (
        _ts("the master sent the command", "master"),
        Column("slave_id", "string", "-", "id of the controllable load (as in the site file)"),
        Column("phase", "int", "-", "phase the slave is wired to (1, 2 or 3)"),
        Column("seq", "int", "-", "command sequence number of this slave, +1 per command sent"),
        Column("value_w", "float", "W", "commanded power"),
        Column("retry", "bool", "-", "true: a resend of an unacknowledged command (same value_w)"),
        Column(
            "ack_ts",
            "timestamp",
            "-",
            "time the acknowledgement arrived (master clock); empty if none",
            nullable=True,
        ),
    ),
)

PI_STATE = Stream(
    "pi_state",
    "PI controller: one row per control cycle, 1 Hz on the controller's clock. A cycle reacts to the "
    "meter reading of the second it runs in; its targets are in force from the next second.",
    (
        _ts("the cycle decided", "controller"),
        Column("cycle", "int", "-", "cycle counter: +1 per second, 0 at a (re)start of the controller"),
        Column("setpoint_w", "float", "W", "export setpoint"),
        Column("error_w", "float", "W", "export error the cycle saw (export - setpoint)"),
        Column(
            "integral_w", "float", "W", "PI integrator state after the cycle (total output before allocation)"
        ),
        *_per_phase("target_w", "W", "power target decided this cycle"),
        *_per_phase("available_w", "W", "controllable power available (slave status at the cycle's start)"),
        *_per_phase(
            "controlled_w", "W", "power the controllable loads drew (slave reports at the cycle's start)"
        ),
    ),
)

STREAMS: dict[str, Stream] = {s.name: s for s in (METER, COMMANDS, PI_STATE)}

_KINDS: dict[str, tuple[Any, pa.DataType, str]] = {
    "timestamp": (pl.Datetime("ms", "UTC"), pa.timestamp("ms", tz="UTC"), "timestamp (UTC, ms)"),
    "float": (pl.Float64, pa.float64(), "float64"),
    "int": (pl.Int64, pa.int64(), "int64"),
    "bool": (pl.Boolean, pa.bool_(), "bool"),
    "string": (pl.String, pa.string(), "string"),
}
"""Each column kind: its polars dtype once parsed, its Parquet (arrow) type, its name in the README table."""


def polars_schema(stream: Stream) -> pl.Schema:
    """The parsed (typed) form of ``stream`` as a polars schema."""
    return pl.Schema({c.name: _KINDS[c.kind][0] for c in stream.columns})


def arrow_schema(stream: Stream) -> pa.Schema:
    """The Parquet form of ``stream``; column descriptions and units are kept as field metadata."""
    return pa.schema(
        [
            pa.field(
                c.name,
                _KINDS[c.kind][1],
                nullable=c.nullable,
                metadata={"unit": c.unit, "description": c.description},
            )
            for c in stream.columns
        ],
        metadata={"stream": stream.name, "schema_version": SCHEMA_VERSION},
    )


def markdown_table(stream: Stream) -> str:
    """The stream's columns as a Markdown table (for the README)."""
    rows = [
        [f"`{c.name}`", _KINDS[c.kind][2] + (", may be empty" if c.nullable else ""), c.unit, c.description]
        for c in stream.columns
    ]
    return format_table(rows, ["column", "type", "unit", "meaning"], style="markdown")
