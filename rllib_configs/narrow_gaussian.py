"""PPO's default torch module with its exploration noise started narrow: a fixed offset on the log-std.

RLlib's diagonal-Gaussian policy starts at a standard deviation of about 1 in action units. For a policy
that corrects a rule-based controller (CityLearn's ``action_mode: rbc_residual``), that noise is as wide
as the correction's whole reach: with ``residual_scale`` 0.5 every sampled week moves each battery by half
its power at random, and those weeks score far below the controller being corrected (README, CityLearn).
Shrinking ``residual_scale`` narrows the noise, but it also caps what the policy can ever correct.

This module keeps the reach and narrows only the noise: the pi head's log-std output plus
``log_std_offset`` (``model_config: {log_std_offset: -1.6}`` starts at std 0.2). The mean is untouched,
so the greedy policy (:func:`rllib_configs.policy.deterministic_module`, the bundle's graph) is the
default module's, and PPO can still widen or narrow the noise as it learns (the offset is a constant
added to a learned output).

Configured as ``rl_module: {rl_module_spec: {module_class:
rllib_configs.narrow_gaussian.NarrowGaussianPPOModule}, model_config: {log_std_offset: ...}}``
(rllib_configs/citylearn/ppo_narrow.yaml).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns


def log_std_offset(model_config: Any) -> float:
    """``model_config``'s ``log_std_offset`` (0.0 when absent); ValueError unless a finite number."""
    value = (model_config or {}).get("log_std_offset", 0.0) if isinstance(model_config, dict) else 0.0
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_config.log_std_offset: a number, got {value!r}") from None
    if not torch.isfinite(torch.tensor(out)):
        raise ValueError(f"model_config.log_std_offset: a finite number, got {value!r}")
    return out


class NarrowGaussianPPOModule(DefaultPPOTorchRLModule):
    """:class:`DefaultPPOTorchRLModule` whose log-std is the head's output plus ``log_std_offset``."""

    def setup(self) -> None:
        self.log_std_offset = log_std_offset(self.model_config)
        super().setup()

    def _offset(self, out: dict[str, Any]) -> dict[str, Any]:
        mean, log_std = out[Columns.ACTION_DIST_INPUTS].chunk(2, dim=-1)
        out[Columns.ACTION_DIST_INPUTS] = torch.cat([mean, log_std + self.log_std_offset], dim=-1)
        return out

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._offset(super()._forward(batch, **kwargs))

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._offset(super()._forward_train(batch, **kwargs))
