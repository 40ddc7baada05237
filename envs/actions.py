"""Actions of the export domain: per-phase power targets (W) and the networks' [-1, 1] scale.

This is the one function pair that scales between the two; everything else imports it.
"""

from __future__ import annotations

import numpy as np

N_ACTIONS = 3
ACTION_NAMES = ("target_w_l1", "target_w_l2", "target_w_l3")


def to_watts(action: np.ndarray, max_power_per_phase_w: float) -> np.ndarray:
    """Map network actions in [-1, 1] to per-phase targets in [0, max_power_per_phase_w] (W).

    Values outside [-1, 1] are clipped; NaN maps to 0 W (no controlled load), never to NaN.
    """
    # fmax/fmin return the non-NaN operand: NaN -> -1 -> 0 W; +-inf clip to the bounds.
    a = np.fmin(np.fmax(np.asarray(action, dtype=np.float64), -1.0), 1.0)
    return (a + 1.0) * (0.5 * max_power_per_phase_w)


def to_unit(watts: np.ndarray, max_power_per_phase_w: float) -> np.ndarray:
    """Inverse of :func:`to_watts`: targets in W to [-1, 1] (clipped)."""
    w = np.asarray(watts, dtype=np.float64)
    return np.clip(w * (2.0 / max_power_per_phase_w) - 1.0, -1.0, 1.0)
