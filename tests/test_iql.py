"""IQLTorchModule (rllib_configs/iql.py): the training forward pass IQL's loss reads, equal to RLlib's."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.dqn.dqn_learner import QF_PREDS
from ray.rllib.algorithms.iql.iql_learner import QF_TARGET_PREDS, VF_PREDS_NEXT
from ray.rllib.algorithms.iql.torch.default_iql_torch_rl_module import DefaultIQLTorchRLModule
from ray.rllib.algorithms.sac.sac_learner import QF_TWIN_PREDS
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from envs.actions import N_ACTIONS
from envs.state_spec import N_FEATURES
from rllib_configs.iql import IQLTorchModule

READ_BY_THE_LOSS = (Columns.ACTION_DIST_INPUTS, QF_PREDS, QF_TWIN_PREDS, QF_TARGET_PREDS, Columns.VF_PREDS,
                    VF_PREDS_NEXT)


def _module(cls: type) -> object:
    spec = RLModuleSpec(
        module_class=cls,
        observation_space=gym.spaces.Box(-10.0, 10.0, (N_FEATURES,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (N_ACTIONS,), np.float32),
        model_config={"fcnet_hiddens": [32, 32], "twin_q": True},
    )
    module = spec.build()
    module.make_target_networks()
    return module


def test_iql_module_computes_what_the_loss_reads_as_rllibs_does():
    torch.manual_seed(0)
    ours, rllib = _module(IQLTorchModule), _module(DefaultIQLTorchRLModule)
    rllib.load_state_dict(ours.state_dict())
    for (name, p), q in zip(ours.named_parameters(), rllib.parameters(), strict=True):
        assert torch.equal(p, q), name
    with torch.no_grad():  # targets differ from the online nets, or a swapped pair would go unseen
        for p in (*ours.target_qf.parameters(), *rllib.target_qf.parameters()):
            p.add_(0.1)
    batch = {
        Columns.OBS: torch.randn(64, N_FEATURES),
        Columns.ACTIONS: torch.rand(64, N_ACTIONS) * 2 - 1,
        Columns.NEXT_OBS: torch.randn(64, N_FEATURES),
    }
    a, b = ours.forward_train(batch), rllib.forward_train(batch)
    for key in READ_BY_THE_LOSS:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert not torch.equal(a[QF_TARGET_PREDS], torch.min(a[QF_PREDS], a[QF_TWIN_PREDS]))
    assert "q_target_next" not in a and "logp_resampled" not in a  # SAC's passes are skipped
