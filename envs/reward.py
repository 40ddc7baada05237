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
