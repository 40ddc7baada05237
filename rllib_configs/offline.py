"""Offline training on gridrl datasets: observation normalisation in RLlib's offline pre-learner, the
dataset held in memory with shuffled minibatches drawn there (:class:`InMemoryOfflineData`), and
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
from ray.rllib.core import COMPONENT_RL_MODULE
from ray.rllib.env import INPUT_ENV_SPACES
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


class InMemoryOfflineData(OrderedOfflineData):
    """The whole dataset in memory, through the pre-learner once; learners draw shuffled minibatches there.

    RLlib's :class:`OfflineData` streams every minibatch through Ray Data (``iter_torch_batches`` over the
    mapped dataset, with prefetching threads), in the order of the files: two consecutive minibatches are
    two consecutive stretches of seconds of one day, and every epoch repeats the same minibatches. A gridrl
    dataset fits in memory, so this class reads it through Ray Data once (order kept: same seed, same
    data), runs the configured pre-learner (RLlib's learner-connector pipeline, plus the normalisation of
    :class:`NormalizingPreLearner` where configured) over it once, in this process, and hands each learner
    an :class:`InMemoryBatches`: every epoch a fresh permutation of the rows (seeded by ``config.seed`` and
    the learner's index), cut into minibatches of the learner's ``train_batch_size_per_learner``.

    For learner connectors that do not read the module's weights (BC, CQL, IQL): the pre-learner runs once,
    with the module's initial weights (MARWIL's advantages would go stale; RLlib's
    ``materialize_mapped_data`` has the same limit). ``offline_data.map_batches_kwargs`` does not apply (no
    pre-learner actors); ``iter_batches_kwargs`` are accepted and ignored. The sampler's position is not
    checkpointed: a resumed run draws from its seed again.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._shards: list[InMemoryBatches] | None = None

    def sample(
        self,
        num_samples: int,
        return_iterator: bool = False,
        num_shards: int = 1,
        module_state: dict[str, Any] | None = None,
    ) -> Any:
        if not return_iterator:
            raise ValueError(
                "InMemoryOfflineData serves learners through iterators: "
                "set offline_data.dataset_num_iters_per_learner >= 2"
            )
        if self._shards is None:
            import ray

            columns = self._mapped_columns(num_samples, module_state)
            seed = int(self.config.seed or 0)
            ref = ray.put(columns)
            self._shards = [InMemoryBatches(ref, seed=seed + i) for i in range(max(1, num_shards))]
        return list(self._shards)

    def _mapped_columns(self, batch_size: int, module_state: dict[str, Any] | None) -> dict[str, np.ndarray]:
        """Every row of the dataset through the pre-learner: one numpy array per column (flattened keys)."""
        import ray

        if not module_state:
            learner = self.learner_handles[0]
            if isinstance(learner, ray.actor.ActorHandle):
                module_state = ray.get(learner.get_state.remote(component=COMPONENT_RL_MODULE))
            else:
                module_state = learner.get_state(component=COMPONENT_RL_MODULE)
            module_state = module_state[COMPONENT_RL_MODULE]
        prelearner = self.prelearner_class(
            config=self.config,
            spaces=self.spaces[INPUT_ENV_SPACES],
            module_spec=self.module_spec,
            module_state=module_state,
        )
        parts: dict[str, list[np.ndarray]] = {}
        for batch in self.data.iter_batches(
            batch_size=self.data_read_batch_size or batch_size, batch_format="numpy"
        ):
            for key, value in prelearner(batch).items():
                parts.setdefault(key, []).append(
                    value.numpy() if hasattr(value, "numpy") else np.asarray(value)
                )
        if not parts:
            raise ValueError(f"{self.path}: the offline dataset has no rows")
        return {key: np.concatenate(values) for key, values in parts.items()}


class InMemoryBatches:
    """What a learner iterates (RLlib calls ``iter_torch_batches`` on it, as on a Ray Data iterator).

    It holds an object reference to the mapped columns (cheap to send to remote learners; the columns
    themselves also do) and resolves it where it is iterated, once, into tensors on the learner's device.
    Each pass over the returned iterable is one epoch: a fresh permutation of the rows, the last incomplete
    minibatch dropped.
    """

    def __init__(self, columns: Any, seed: int) -> None:
        self._columns = columns
        self.seed = seed

    def iter_torch_batches(self, *, batch_size: int, device: Any = None, **_: Any) -> _Epochs:
        import ray
        import torch

        columns = ray.get(self._columns) if isinstance(self._columns, ray.ObjectRef) else self._columns
        tensors = {k: torch.from_numpy(np.array(v)).to(device or "cpu") for k, v in columns.items()}
        return _Epochs(tensors, int(batch_size), np.random.default_rng(self.seed))


class _Epochs:
    def __init__(self, tensors: dict[str, Any], batch_size: int, rng: np.random.Generator) -> None:
        self.tensors = tensors
        self.rows = len(next(iter(tensors.values())))
        if self.rows < batch_size:
            raise ValueError(
                f"the offline dataset has {self.rows} rows, fewer than a minibatch of {batch_size}"
            )
        self.batch_size = batch_size
        self.rng = rng

    def __iter__(self) -> Any:
        import torch

        device = next(iter(self.tensors.values())).device
        order = torch.from_numpy(self.rng.permutation(self.rows)).to(device)
        for start in range(0, self.rows - self.batch_size + 1, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield {k: v.index_select(0, idx) for k, v in self.tensors.items()}


class NormalizingPreLearner(OfflinePreLearner):
    """RLlib's OfflinePreLearner with ``obs`` and ``new_obs`` normalised by the dataset's statistics."""

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        path = (config.learner_config_dict or {}).get(NORMALIZATION_KEY)
        if not path:
            raise ValueError(
                f"NormalizingPreLearner: learners.learner_config_dict.{NORMALIZATION_KEY} is not set"
            )
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
                out[dst + name[len(src) :]] = value
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
