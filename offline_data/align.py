"""Stage 2, align: the three validated streams of a day on one 1 s grid, cut into episodes.

For each UTC second ``g`` of the day this rebuilds the signals of envs/state_spec.py (what the master
controller knew at ``g``), with as-of joins:

* meter readings: the reading of second ``g`` (the nearest second of its time) or NaN; the feature kernel
  holds the last reading and counts its age. More than ``max_meter_staleness_s`` seconds without a reading
  is a gap.
* PI state (available power, setpoint, controlled load): the cycle that ran in second ``g``, or the last one
  up to ``max_pi_staleness_s`` seconds before (forward fill); longer is a gap.
* targets: those decided by the cycle of second ``g - 1`` (same forward fill). At a controller (re)start,
  a cycle whose counter is 0, targets before it are 0 W.
* acknowledged commands: per slave, the value of the last command acknowledged by second ``g``
  (an acknowledgement received in ``(g-1, g]`` counts from ``g``; within one second the highest ``seq``
  wins), summed per phase. At a controller start every slave is at 0 W; without one in the partition a
  slave's value is unknown until its first acknowledgement. A rejected command row (other than an exact
  copy) makes its slave's value unknown (all slaves when the slave is unreadable) until its next
  acknowledgement.
* command changes: commands sent in second ``g`` that are not retries (for the reward).

Episodes are the longest runs of seconds where every signal is known; one begins at a fresh meter reading
(as the feature kernel requires), a controller start always begins one, and nothing is interpolated across
a gap. Episodes shorter than ``min_episode_s`` are dropped. An episode never crosses a day partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from envs.state_spec import SIGNALS
from offline_data.validate import Validated

PH = (1, 2, 3)
SIGNAL_NAMES = tuple(f.name for f in SIGNALS)


@dataclass(frozen=True)
class AlignConfig:
    """Limits of the alignment (fields of the build config)."""

    max_meter_staleness_s: int = 10
    """Seconds a meter reading may be held; a longer gap ends the episode."""
    max_pi_staleness_s: int = 2
    """Seconds a PI cycle may be forward-filled; a longer gap ends the episode."""
    min_episode_s: int = 2
    """Shorter episodes are dropped (an episode of n seconds gives n - 1 transitions)."""


@dataclass
class Aligned:
    """One day on the grid: ``frame`` has ``second``, ``episode``, the 17 signals (SIGNAL_NAMES),
    ``controlled_w_l1..3``, ``changes`` and ``pi_filled``, only for seconds inside episodes."""

    frame: pl.DataFrame
    counts: dict = field(default_factory=dict)


def _pi_rows(pi: pl.DataFrame) -> pl.DataFrame:
    return (
        pi.select(
            pl.col("second").alias("_p_at"),
            (pl.col("second") - pl.col("cycle")).alias("_p_era"),
            pl.col("setpoint_w"),
            *(pl.col(f"available_w_l{p}") for p in PH),
            *(pl.col(f"controlled_w_l{p}") for p in PH),
            *(pl.col(f"target_w_l{p}") for p in PH),
        )
        .unique("_p_at", keep="first")
        .sort("_p_at")
    )


def _acked_events(cmds: Validated, eras: pl.Series) -> tuple[pl.DataFrame, dict[str, int]]:
    """Per slave, events that set its acknowledged value: controller starts (0 W), acknowledgements and
    rejected rows (null = unknown); one event per slave and second, the last in priority order."""
    v = cmds.valid
    phases = dict(v.group_by("slave_id").agg(pl.col("phase").first()).iter_rows())
    unknown = (
        cmds.unknown_from
        if cmds.unknown_from is not None
        else pl.DataFrame(schema={"slave_id": pl.String, "second": pl.Int64})
    )
    slaves = sorted(set(phases) | set(unknown["slave_id"].drop_nulls().to_list()))
    acks = v.filter(pl.col("ack_ts_ms").is_not_null()).select(
        "slave_id",
        (-((-pl.col("ack_ts_ms")) // 1000)).alias("_e_at"),
        pl.lit(1).alias("_prio"),
        "seq",
        pl.col("value_w").alias("_value"),
    )
    starts = pl.DataFrame(
        {"slave_id": [s for s in slaves for _ in eras], "_e_at": [int(e) for _ in slaves for e in eras]},
        schema={"slave_id": pl.String, "_e_at": pl.Int64},
    )
    starts = starts.with_columns(
        pl.lit(0).alias("_prio"), pl.lit(0, pl.Int64).alias("seq"), pl.lit(0.0).alias("_value")
    )
    unk = unknown.select(pl.col("slave_id"), pl.col("second").alias("_e_at"))
    unk = pl.concat(
        [
            unk.filter(pl.col("slave_id").is_not_null()),
            *(
                unk.filter(pl.col("slave_id").is_null()).with_columns(pl.lit(s).alias("slave_id"))
                for s in slaves
            ),
        ]
    )
    unk = unk.with_columns(
        pl.lit(2).alias("_prio"), pl.lit(0, pl.Int64).alias("seq"), pl.lit(None, pl.Float64).alias("_value")
    )
    cols = ["slave_id", "_e_at", "_prio", "seq", "_value"]
    ev = pl.concat(
        [
            e.select(cols).cast({"_prio": pl.Int32, "seq": pl.Int64, "_e_at": pl.Int64})
            for e in (starts, acks, unk)
        ]
    )
    ev = (
        ev.sort("slave_id", "_e_at", "_prio", "seq").group_by("slave_id", "_e_at", maintain_order=True).last()
    )
    for s in slaves:
        phases.setdefault(s, 0)  # a slave seen only in rejected rows: phase unknown, counted on none
    return ev.sort("_e_at"), phases


def align_day(meter: Validated, pi: Validated, cmds: Validated, cfg: AlignConfig) -> Aligned:
    """Put one day's validated streams on the 1 s grid and cut it into episodes (module docstring)."""
    m, p = meter.valid, pi.valid
    if m.height == 0 or p.height == 0:
        return Aligned(pl.DataFrame(), {"grid_seconds": 0, "episode_seconds": 0, "episodes": 0})
    lo = int(min(m["second"].min(), p["second"].min()))
    hi = int(max(m["second"].max(), p["second"].max()))
    g = pl.DataFrame({"second": np.arange(lo, hi + 1, dtype=np.int64)})
    readings = m.select(
        "second",
        *(pl.col(f"export_w_l{q}").alias(f"meter_export_w_l{q}") for q in PH),
        *(pl.col(f"pv_w_l{q}").alias(f"meter_pv_w_l{q}") for q in PH),
    ).unique("second", keep="first")
    g = g.join(readings, on="second", how="left")
    g = g.with_columns(
        pl.when(pl.col("meter_export_w_l1").is_not_null())
        .then(pl.col("second"))
        .forward_fill()
        .alias("_m_last"),
        *(pl.col(c).fill_null(float("nan")) for c in readings.columns if c != "second"),
    )
    rows = _pi_rows(p)
    eras = rows["_p_era"].unique().sort()
    g = g.join_asof(pl.DataFrame({"_era": eras}), left_on="second", right_on="_era", strategy="backward")
    tol = cfg.max_pi_staleness_s
    state = rows.drop(*(f"target_w_l{q}" for q in PH))
    g = g.join_asof(state, left_on="second", right_on="_p_at", strategy="backward", tolerance=tol)
    tgt = rows.select(
        (pl.col("_p_at") + 1).alias("_t_at"),
        pl.col("_p_era").alias("_t_era"),
        *(pl.col(f"target_w_l{q}") for q in PH),
    )
    g = g.join_asof(tgt, left_on="second", right_on="_t_at", strategy="backward", tolerance=tol)
    same_era = pl.col("_p_era") == pl.col("_era")
    target_ok = (pl.col("_t_era") == pl.col("_era")) & pl.col("_t_at").is_not_null()
    restart = pl.col("second") == pl.col("_era")
    g = g.with_columns(
        *(
            pl.when(restart)
            .then(0.0)
            .when(target_ok)
            .then(pl.col(f"target_w_l{q}"))
            .otherwise(None)
            .alias(f"target_w_l{q}")
            for q in PH
        ),
        (pl.col("_p_at").is_not_null() & same_era.fill_null(False)).alias("_pi_ok"),
    )
    g = _join_acked(g, cmds, eras)
    sent = (
        cmds.valid.filter(~pl.col("retry")).group_by("second").agg(pl.len().cast(pl.Int64).alias("changes"))
    )
    g = g.join(sent, on="second", how="left").with_columns(pl.col("changes").fill_null(0))
    return _episodes(g, cfg)


def _join_acked(g: pl.DataFrame, cmds: Validated, eras: pl.Series) -> pl.DataFrame:
    ev, phases = _acked_events(cmds, eras)
    sums: dict[int, list[pl.Expr]] = {q: [] for q in PH}
    for i, (slave, phase) in enumerate(sorted(phases.items())):
        e = ev.filter(pl.col("slave_id") == slave).select(
            pl.col("_e_at").alias(f"_a{i}_at"), pl.col("_value").alias(f"_a{i}")
        )
        g = g.join_asof(e, left_on="second", right_on=f"_a{i}_at", strategy="backward")
        if phase in sums:
            sums[phase].append(pl.col(f"_a{i}"))
        else:  # unknown phase: unknown state whenever the slave's value is unknown
            g = g.with_columns(pl.when(pl.col(f"_a{i}").is_null()).then(None).otherwise(0.0).alias(f"_a{i}"))
            for q in PH:
                sums[q].append(pl.col(f"_a{i}"))
    # sum_horizontal ignores nulls: a null (unknown) anywhere makes the phase unknown.
    return g.with_columns(
        pl.when(pl.any_horizontal(e.is_null() for e in sums[q]) if sums[q] else pl.lit(False))
        .then(None)
        .otherwise(pl.sum_horizontal(sums[q]) if sums[q] else pl.lit(0.0))
        .cast(pl.Float64)
        .alias(f"acked_w_l{q}")
        for q in PH
    )


def _episodes(g: pl.DataFrame, cfg: AlignConfig) -> Aligned:
    age = pl.col("second") - pl.col("_m_last")
    meter_ok = age.is_not_null() & (age <= cfg.max_meter_staleness_s)
    target_ok = pl.all_horizontal(pl.col(f"target_w_l{q}").is_not_null() for q in PH)
    acked_ok = pl.all_horizontal(pl.col(f"acked_w_l{q}").is_not_null() for q in PH)
    g = g.with_columns(
        meter_ok.alias("_meter_ok"),
        target_ok.alias("_target_ok"),
        acked_ok.alias("_acked_ok"),
        (age == 0).fill_null(False).alias("_fresh"),
    )
    ok = pl.col("_meter_ok") & pl.col("_pi_ok") & pl.col("_target_ok") & pl.col("_acked_ok")
    g = g.with_columns(ok.alias("_ok"))
    new_run = (~pl.col("_ok").shift(1).fill_null(False)) | (pl.col("second") == pl.col("_era"))
    g = g.with_columns((new_run & pl.col("_ok")).cum_sum().alias("_run"))
    # An episode starts at the first fresh reading of its run.
    g = g.with_columns((pl.col("_fresh") & pl.col("_ok")).cum_sum().over("_run").alias("_since_fresh"))
    keep = pl.col("_ok") & (pl.col("_since_fresh") > 0)
    g = g.with_columns(keep.alias("_keep"))
    g = g.with_columns(pl.len().over(pl.when(pl.col("_keep")).then(pl.col("_run"))).alias("_len"))
    g = g.with_columns((pl.col("_keep") & (pl.col("_len") >= cfg.min_episode_s)).alias("_in"))
    n = g.height
    counts = {
        "grid_seconds": n,
        "episode_seconds": int(g["_in"].sum()),
        "dropped_seconds": {
            "meter_gap": int((~g["_meter_ok"]).sum()),
            "pi_gap": int((g["_meter_ok"] & ~g["_pi_ok"]).sum()),
            "target_unknown": int((g["_meter_ok"] & g["_pi_ok"] & ~g["_target_ok"]).sum()),
            "acked_unknown": int((g["_meter_ok"] & g["_pi_ok"] & g["_target_ok"] & ~g["_acked_ok"]).sum()),
            "before_fresh_reading": int((g["_ok"] & ~g["_keep"]).sum()),
            "short_episode": int((g["_keep"] & ~g["_in"]).sum()),
        },
        "pi_filled_seconds": int((g["_in"] & (g["_p_at"] != g["second"]).fill_null(False)).sum()),
    }
    out = g.filter("_in").with_columns(
        pl.col("_run").rank("dense").cast(pl.Int32).sub(1).alias("episode"),
        pl.col("second").cast(pl.Float64).alias("time_s"),
        (pl.col("_p_at") != pl.col("second")).alias("pi_filled"),
    )
    counts["episodes"] = int(out["episode"].max() + 1) if out.height else 0
    frame = out.select(
        "second", "episode", *SIGNAL_NAMES, *(f"controlled_w_l{q}" for q in PH), "changes", "pi_filled"
    )
    return Aligned(frame, counts)
