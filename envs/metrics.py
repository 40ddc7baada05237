"""Metrics of record of the export domain: one module, the same for every controller.

All metrics are computed from an episode trace (a polars DataFrame with one row per second, as written
by envs/rollout.py, the edge runtime and the model-based evaluator), from these columns:
``export_w_l{1,2,3}`` (true net export per phase, W, positive = export), ``pv_w_l*``, ``base_w_l*``,
``ctrl_w_l*`` (controlled load), ``command_changes`` (slave commands changed that second),
``safety_violation`` (0/1) and optionally ``fallback`` (0/1, safety wrapper fell back to the PI).

* export_kwh: energy of the positive part of the net export (summed over phases), kWh.
* peak_export_w: highest 1 s net export, W.
* oscillations_per_min: slave command changes per minute.
* phase_imbalance_w: mean over time of the standard deviation of the export across phases, W.
* controlled_import_kwh: grid import caused by controllable loads,
  sum of ``max(0, -net) - max(0, -(net + ctrl))``, kWh.
* safety_violations, fallback_activations: counts (a fallback activation is a 0 -> 1 edge).
* gap_closed: (PI - controller) / (PI - oracle) on export_kwh, when both baselines ran on the same days.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

METRICS = (
    "export_kwh",
    "peak_export_w",
    "oscillations_per_min",
    "phase_imbalance_w",
    "controlled_import_kwh",
    "safety_violations",
    "fallback_activations",
    "gap_closed",
)
_J_PER_KWH = 3.6e6


def _phases(trace: pl.DataFrame, prefix: str) -> np.ndarray:
    return trace.select([f"{prefix}_l{p}" for p in (1, 2, 3)]).to_numpy().astype(np.float64)


def metrics_of_record(trace: pl.DataFrame, dt_s: float = 1.0) -> dict[str, float]:
    """Compute the metrics of record (all but gap_closed) of one trace (or days concatenated)."""
    if trace.height == 0:
        raise ValueError("metrics_of_record: empty trace")
    x = _phases(trace, "export_w")
    ctrl = _phases(trace, "ctrl_w").sum(-1)
    net = x.sum(-1)
    export_pos = np.clip(net, 0.0, None)
    import_ctrl = np.clip(-net, 0.0, None) - np.clip(-(net + ctrl), 0.0, None)
    changes = trace["command_changes"].to_numpy()
    minutes = trace.height * dt_s / 60.0
    fallback = trace["fallback"].to_numpy() if "fallback" in trace.columns else np.zeros(trace.height)
    activations = int(np.sum(np.diff(np.concatenate([[0], (fallback > 0).astype(int)])) == 1))
    return {
        "export_kwh": float(export_pos.sum() * dt_s / _J_PER_KWH),
        "peak_export_w": float(export_pos.max()),
        "oscillations_per_min": float(changes.sum() / minutes),
        "phase_imbalance_w": float(x.std(axis=-1).mean()),
        "controlled_import_kwh": float(import_ctrl.sum() * dt_s / _J_PER_KWH),
        "safety_violations": int(trace["safety_violation"].sum()),
        "fallback_activations": activations,
    }


def add_gap_closed(results: dict[str, dict[str, float]], pi: str = "pi", oracle: str = "oracle") -> None:
    """Add ``gap_closed`` to every controller's metrics in place (NaN when PI or oracle is missing)."""
    if pi in results and oracle in results:
        gap = results[pi]["export_kwh"] - results[oracle]["export_kwh"]
        for m in results.values():
            m["gap_closed"] = (results[pi]["export_kwh"] - m["export_kwh"]) / gap if gap > 1e-9 else math.nan
    else:
        for m in results.values():
            m["gap_closed"] = math.nan


def reduction_pct(value: float, baseline: float) -> float:
    """Reduction of ``value`` against ``baseline`` in % (positive = better = lower)."""
    return 100.0 * (baseline - value) / baseline if baseline > 0 else math.nan
