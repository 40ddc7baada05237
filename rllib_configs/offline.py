"""Offline training on gridrl datasets: observation normalisation in RLlib's offline pre-learner, and
initialising one algorithm's policy from another's checkpoint (CQL from BC).

Datasets store the raw state vector; the networks see it normalised with the dataset's
``normalization.json`` (train-split statistics), exactly as the env wrapper normalises it online
(envs/normalization.py). The config names the file once, in ``learners.learner_config_dict``::

    learners: {learner_config_dict: {obs_normalization: ${dataset}/normalization.json}}
    offline_data: {prelearner_class: rllib_configs.offline.NormalizingPreLearner, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray.rllib.offline.offline_data import OfflineData
from ray.rllib.offline.offline_prelearner import OfflinePreLearner

from envs.normalization import ObsNormalizer

NORMALIZATION_KEY = "obs_normalization"
# BC module parameter prefix -> SAC/CQL policy parameter prefix (RLlib 2.60 default torch modules).
POLICY_PREFIXES = {"_encoder.": "pi_encoder.", "_pi_head.": "pi.", "pi_encoder.": "pi_encoder.", "pi.": "pi."}


class OrderedOfflineData(OfflineData):
    """RLlib's OfflineData with Ray Data told to keep the order of the blocks it streams.

    Without it the pre-learner's output reaches the learner in completion order, and two runs with the same
    seed train on different batches (BC's first-iteration loss differed: -1.429 vs -1.090). The flag is
    set in the process that creates the dataset (the algorithm's), before the dataset captures its context.
    """

    def __init__(self, config: Any) -> None:
        import ray.data

        ray.data.DataContext.get_current().execution_options.preserve_order = True
        super().__init__(config)


class NormalizingPreLearner(OfflinePreLearner):
    """RLlib's OfflinePreLearner with ``obs`` and ``new_obs`` normalised by the dataset's statistics."""

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        path = (config.learner_config_dict or {}).get(NORMALIZATION_KEY)
        if not path:
            raise ValueError(f"NormalizingPreLearner: learners.learner_config_dict.{NORMALIZATION_KEY} is not set")
        self._normalizer = ObsNormalizer.load(path)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        for key in ("obs", "new_obs"):
            if key in batch:
                batch[key] = self._normalizer(np.stack(batch[key]))
        return super().__call__(batch)


def policy_state_from(checkpoint: str | Path) -> dict[str, Any]:
    """The policy parameters of a checkpoint's RLModule, renamed to the SAC/CQL module's names."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from rllib_configs.policy import latest_checkpoint, module_path

    try:
        path = module_path(checkpoint)  # a checkpoint, a promoted best/ folder or a module directory
    except FileNotFoundError:
        path = module_path(latest_checkpoint(checkpoint))  # a run directory: its newest checkpoint
    module = RLModule.from_checkpoint(str(path))
    out = {}
    for name, value in module.state_dict().items():
        for src, dst in POLICY_PREFIXES.items():
            if name.startswith(src):
                out[dst + name[len(src):]] = value
                break
    if not out:
        raise ValueError(f"{checkpoint}: no policy parameters found to initialise from")
    return out


def init_policy_from_checkpoint(algorithm: Any, checkpoint: str, **_: Any) -> None:
    """``on_algorithm_init`` callback: copy a checkpoint's policy weights into the algorithm's policy."""
    import torch

    state = policy_state_from(checkpoint)

    def load(learner: Any) -> int:
        module = learner.module["default_policy"]
        own = module.state_dict()
        missing = [k for k in state if k not in own or own[k].shape != state[k].shape]
        if missing:
            raise ValueError(f"init_from {checkpoint}: parameters do not fit this policy: {missing[:4]}")
        module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
        return len(state)

    algorithm.learner_group.foreach_learner(load)
    print(f"[train] initialised the policy from {checkpoint} ({len(state)} parameter tensors)", flush=True)
