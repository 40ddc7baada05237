"""IQL's RLModule without the SAC passes that IQL's loss never reads (rllib_configs/export/iql.yaml).

RLlib 2.60's ``DefaultIQLTorchRLModule._forward_train`` first runs SAC's training forward pass, which scores
the policy's resampled actions on the current states with both Q networks and the next states' resampled
actions with both target networks, and runs the policy on the next states; IQL's loss
(``IQLTorchLearner.compute_loss_for_module``) reads none of it. With RLlib's Q networks (a two-stream encoder
and a fusion stack, 666k parameters each) those four Q passes are half of an update's work.
:class:`IQLTorchModule` computes exactly what the loss reads, with the same networks, parameter names and
inference path (so checkpoints, ``gridrl export`` and serving are unchanged):

* the policy's distribution inputs on ``obs`` (the advantage-weighted log-likelihood of the logged action);
* Q and twin Q of the logged ``(obs, actions)`` (the TD loss);
* the smaller target Q of ``(obs, actions)`` (the expectile value loss and the advantages);
* V of ``obs`` and of ``new_obs`` (the value loss and the TD target).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.dqn.dqn_learner import QF_PREDS
from ray.rllib.algorithms.iql.iql_learner import QF_TARGET_PREDS, VF_PREDS_NEXT
from ray.rllib.algorithms.iql.torch.default_iql_torch_rl_module import DefaultIQLTorchRLModule
from ray.rllib.algorithms.sac.sac_learner import QF_TWIN_PREDS
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ENCODER_OUT


class IQLTorchModule(DefaultIQLTorchRLModule):
    """RLlib's default IQL module whose training forward pass computes only what IQL's loss reads."""

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs, actions = batch[Columns.OBS], batch[Columns.ACTIONS]
        current = {Columns.OBS: obs, Columns.ACTIONS: actions}
        out = {Columns.ACTION_DIST_INPUTS: self.pi(self.pi_encoder({Columns.OBS: obs})[ENCODER_OUT])}
        out[QF_PREDS] = self._qf_forward_train_helper(current, self.qf_encoder, self.qf)
        target = self._qf_forward_train_helper(current, self.target_qf_encoder, self.target_qf)
        if self.twin_q:
            out[QF_TWIN_PREDS] = self._qf_forward_train_helper(current, self.qf_twin_encoder, self.qf_twin)
            twin = self._qf_forward_train_helper(current, self.target_qf_twin_encoder, self.target_qf_twin)
            target = torch.min(target, twin)
        out[QF_TARGET_PREDS] = target
        out[Columns.VF_PREDS] = self.compute_values(current)
        out[VF_PREDS_NEXT] = self.compute_values({Columns.OBS: batch[Columns.NEXT_OBS]})
        return out
