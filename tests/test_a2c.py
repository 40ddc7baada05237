"""A2C as PPO's special case: one update's gradient equals the A2C loss gradient on the same batch."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rllib_configs.algorithms import A2CConfig


def _learner(config: A2CConfig):
    obs_space = gym.spaces.Box(-10, 10, (30,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    learner = config.build_learner(spaces={"__env__": (obs_space, act_space), "default_policy": (obs_space, act_space)})
    learner.build()
    return learner


def test_a2c_config_fixes_the_special_case():
    cfg = A2CConfig()
    assert cfg.num_epochs == 1 and cfg.use_kl_loss is False and cfg.minibatch_size is None
    with pytest.raises(ValueError, match="num_epochs"):
        cfg.training(num_epochs=4)
    with pytest.raises(ValueError, match="minibatch_size"):
        cfg.training(minibatch_size=64)


def test_ppo_update_gradient_equals_a2c_loss_gradient():
    from ray.rllib.core.columns import Columns
    from ray.rllib.evaluation.postprocessing import Postprocessing

    torch.manual_seed(0)
    vf_coeff, ent_coeff = 0.5, 0.01
    config = (
        A2CConfig()
        .environment(observation_space=gym.spaces.Box(-10, 10, (30,), np.float32),
                     action_space=gym.spaces.Box(-1, 1, (3,), np.float32))
        .training(vf_loss_coeff=vf_coeff, entropy_coeff=ent_coeff, train_batch_size_per_learner=64)
        .rl_module(model_config={"fcnet_hiddens": [32, 32]})
    )
    learner = _learner(config)
    module_id = "default_policy"
    module = learner.module[module_id].unwrapped()
    n = 64
    obs = torch.randn(n, 30)
    with torch.no_grad():
        dist_inputs = module.forward_exploration({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        dist = module.get_exploration_action_dist_cls().from_logits(dist_inputs)
        actions = dist.sample()
        logp = dist.logp(actions)  # the behaviour policy is the current one: ratio = 1
    batch = {
        Columns.OBS: obs,
        Columns.ACTIONS: actions,
        Columns.ACTION_LOGP: logp,
        Columns.ACTION_DIST_INPUTS: dist_inputs,
        Postprocessing.ADVANTAGES: torch.randn(n),
        Postprocessing.VALUE_TARGETS: torch.randn(n) * 3.0,
    }
    params = [p for p in module.parameters() if p.requires_grad]

    fwd = module.forward_train(batch)
    ppo_loss = learner.compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd)
    ppo_grads = torch.autograd.grad(ppo_loss, params)

    fwd = module.forward_train(batch)
    cur = module.get_train_action_dist_cls().from_logits(fwd[Columns.ACTION_DIST_INPUTS])
    values = module.compute_values(batch)
    a2c_loss = torch.mean(
        -batch[Postprocessing.ADVANTAGES] * cur.logp(actions)
        + vf_coeff * (values - batch[Postprocessing.VALUE_TARGETS]) ** 2
        - ent_coeff * cur.entropy()
    )
    a2c_grads = torch.autograd.grad(a2c_loss, params)

    # The loss values differ by a constant (A * ratio vs A * log pi, at ratio 1); the gradients do not.
    for g_ppo, g_a2c in zip(ppo_grads, a2c_grads):
        torch.testing.assert_close(g_ppo, g_a2c, rtol=1e-5, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in ppo_grads)
    assert sum(float(g.abs().sum()) for g in ppo_grads) > 1e-3, "vacuous: zero gradient"
