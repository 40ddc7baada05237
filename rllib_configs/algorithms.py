"""Algorithm names -> RLlib config classes, A2C as PPO's special case, and IQL with its temperature free.

RLlib removed A2C (to rllib_contrib in Ray 2.8; that repository was deleted in 2024). gridrl provides it
as PPO configured to its A2C special case, which is exact, not an approximation:

* one epoch over the batch (``num_epochs=1``) with the whole batch as one minibatch, so the single
  update happens at the policy that collected the data: the probability ratio ``r = pi/pi_old`` is 1;
* no KL term (``use_kl_loss=False``) and no clipping (``clip_param``, ``vf_clip_param`` huge); at
  ``r = 1`` clipping would not act anyway, since ``d/dtheta min(r A, clip(r) A) = A d r/dtheta``;
* then ``d/dtheta (r A) = A * d log pi / dtheta`` at ``r = 1``: PPO's surrogate gradient is the policy
  gradient of A2C's loss ``-A log pi(a|s) + c_v (V(s) - R)^2 - c_e H(pi(.|s))``.

tests/test_a2c.py checks it: one update's gradient equals the A2C loss gradient on the same batch.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.iql.iql import IQL as RLlibIQL
from ray.rllib.algorithms.iql.iql import IQLConfig as RLlibIQLConfig
from ray.rllib.algorithms.ppo import PPOConfig

A2C_FIXED = {"num_epochs": 1, "use_kl_loss": False, "clip_param": 1e9, "vf_clip_param": 1e9}


class A2CConfig(PPOConfig):
    """PPO restricted to its A2C special case (see the module docstring). Trains with RLlib's PPO."""

    def __init__(self, algo_class: Any = None) -> None:
        super().__init__(algo_class=algo_class)
        super().training(**A2C_FIXED)
        self.minibatch_size = None  # None = the whole train batch as one minibatch

    def training(self, **kwargs: Any) -> A2CConfig:
        for key, fixed in A2C_FIXED.items():
            if key in kwargs and kwargs[key] != fixed:
                raise ValueError(f"{key}: A2C is PPO with {key}={fixed}; it cannot be changed")
        if kwargs.get("minibatch_size") is not None:
            raise ValueError("minibatch_size: A2C updates on the whole batch at once; leave it unset")
        return super().training(**kwargs)  # type: ignore[return-value]

    def validate(self) -> None:
        super().validate()
        if self.minibatch_size is not None and self.minibatch_size != self.total_train_batch_size:
            raise ValueError("A2C: minibatch_size must be the whole train batch")


class IQLConfig(RLlibIQLConfig):
    """RLlib 2.60's IQL with its temperature ``beta`` free above 1.

    IQL inherits MARWILConfig.validate, which refuses ``beta`` outside [0, 1] (MARWIL's own beta, an
    advantage weight); IQL reuses the field as its temperature, where offline-RL references use about 3
    (CORL's locomotion default) and IQL's own validate asks only for beta > 0. MARWIL's check runs with beta
    capped at 1, then the configured value is put back; IQL's learner reads it as configured.
    """

    def __init__(self, algo_class: Any = None) -> None:
        super().__init__(algo_class=algo_class or IQL)

    def validate(self) -> None:
        beta = self.beta
        self.beta = min(beta, 1.0)
        try:
            super().validate()
        finally:
            self.beta = beta


class IQL(RLlibIQL):
    """RLlib's IQL whose default config is :class:`IQLConfig` (Tune rebuilds a trial's config from it)."""

    @classmethod
    def get_default_config(cls) -> IQLConfig:
        return IQLConfig()


def config_class(name: str) -> type:
    """The AlgorithmConfig class of an algorithm name (case-insensitive)."""
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.algorithms.bc import BCConfig
    from ray.rllib.algorithms.cql import CQLConfig
    from ray.rllib.algorithms.marwil import MARWILConfig
    from ray.rllib.algorithms.sac import SACConfig

    classes = {"PPO": PPOConfig, "A2C": A2CConfig, "APPO": APPOConfig, "SAC": SACConfig, "CQL": CQLConfig,
               "BC": BCConfig, "MARWIL": MARWILConfig, "IQL": IQLConfig}
    try:
        return classes[name.upper()]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(classes)}") from None


OFFLINE_ALGORITHMS = ("BC", "CQL", "MARWIL", "IQL")
