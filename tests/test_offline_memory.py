"""InMemoryOfflineData's sampler (rllib_configs/offline.py): epochs are seeded permutations of the rows."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_configs.offline import InMemoryBatches


def _epochs(seed: int, rows: int = 10, batch: int = 3):
    columns = {
        "default_policy/obs": np.arange(rows * 2, dtype=np.float32).reshape(rows, 2),
        "default_policy/rewards": np.arange(rows, dtype=np.float32),
    }
    return InMemoryBatches(columns, seed=seed).iter_torch_batches(
        batch_size=batch, device="cpu", prefetch_batches=2
    )


def _rewards(epoch) -> list[list[int]]:
    return [b["default_policy/rewards"].int().tolist() for b in epoch]


def test_an_epoch_is_a_permutation_cut_into_minibatches_rows_stay_whole():
    epochs = _epochs(seed=0)
    first = list(epochs)
    assert [len(b["default_policy/rewards"]) for b in first] == [3, 3, 3]  # 10 rows: the last 1 dropped
    seen = sum(_rewards(first), [])
    assert len(set(seen)) == 9 and seen != sorted(seen)
    for b in first:  # a row's columns travel together
        np.testing.assert_array_equal(
            b["default_policy/obs"][:, 0].numpy(), 2 * b["default_policy/rewards"].numpy()
        )
    assert _rewards(epochs) != _rewards(first), "each epoch draws a fresh permutation"


def test_same_seed_same_minibatches_other_seed_others():
    a, b, c = _epochs(seed=4), _epochs(seed=4), _epochs(seed=5)
    assert [_rewards(a), _rewards(a)] == [_rewards(b), _rewards(b)]
    assert _rewards(_epochs(seed=4)) != _rewards(c)


def test_fewer_rows_than_a_minibatch_is_an_error():
    with pytest.raises(ValueError, match="fewer than a minibatch"):
        _epochs(seed=0, rows=2, batch=3)
