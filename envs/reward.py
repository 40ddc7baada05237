"""Reward of the export domain, documented beside the env (envs/export_env.py).

Per 1 s step, with powers in kW::

    r = -( w_export         * max(0, P_export)              # net export over the three phases
           + w_import       * P_import_ctrl                 # grid import caused by controllable loads
           + w_change       * n_command_changes             # slave commands that changed this step
           + w_imbalance    * std(P_export_l1, l2, l3) )    # phase imbalance of the export

``P_import_ctrl = max(0, -P_net) - max(0, -(P_net + P_ctrl))``: the import with the controlled loads
minus the import there would have been without them. Pulling from the grid is not a way to cut export.

Export dominates by default; every weight is configuration (never a literal in the step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the export-domain reward (see the module docstring for the formula)."""

    export: float = 1.0
    """Per kW of net export."""
    controlled_import: float = 1.0
    """Per kW of grid import caused by controllable loads."""
    command_change: float = 0.05
    """Per slave command that changed (oscillation)."""
    imbalance: float = 0.1
    """Per kW of standard deviation of export across phases."""

    def __post_init__(self) -> None:
        for name in ("export", "controlled_import", "command_change", "imbalance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: reward weights must be >= 0")

    def as_array(self) -> np.ndarray:
        """The weights in the order the simulator kernel reads them."""
        return np.array([self.export, self.controlled_import, self.command_change, self.imbalance])


def reward_from_power(
    export_w_l: np.ndarray, ctrl_w_l: np.ndarray, command_changes: np.ndarray, weights: RewardWeights
) -> np.ndarray:
    """The reward of the module docstring, vectorised over steps (the offline pipeline's reward).

    The simulator kernel computes the same formula inline, per step; tests/test_offline_data_* check that
    this function reproduces the kernel's rewards from a trace's columns to float precision.

    Args:
        export_w_l: (T, 3) net export per phase after the step (W, export positive).
        ctrl_w_l: (T, 3) controlled load per phase after the step (W).
        command_changes: (T,) slave commands that changed during the step.
        weights: The reward weights.

    Returns:
        (T,) float64 rewards.
    """
    x = np.asarray(export_w_l, dtype=np.float64)
    net = x.sum(axis=1)
    ctrl = np.asarray(ctrl_w_l, dtype=np.float64).sum(axis=1)
    export_pos = np.maximum(net, 0.0)
    import_ctrl = np.maximum(-net, 0.0) - np.maximum(-(net + ctrl), 0.0)
    mean_x = net / 3.0
    imb = np.sqrt(((x - mean_x[:, None]) ** 2).sum(axis=1) / 3.0)
    w = weights.as_array()
    return -(
        w[0] * export_pos / 1000.0
        + w[1] * import_ctrl / 1000.0
        + w[2] * np.asarray(command_changes, dtype=np.float64)
        + w[3] * imb / 1000.0
    )
