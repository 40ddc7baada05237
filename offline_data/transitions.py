"""Stages 3 and 4: the state vector, actions and rewards per second, then RLlib transitions.

**Steps** (one row per second of an episode, cached per day): ``obs`` is the state vector of
envs/state_spec.py, computed by :func:`envs.state_spec.features_from_signals` (the kernel the env runs)
over each episode from a fresh kernel state; ``actions`` are the targets the PI decided in that second
(the signal ``target_w`` of the next second), scaled to [-1, 1] by :func:`envs.actions.to_unit`;
``rewards`` come from :func:`envs.reward.reward_from_power` applied to what the logs measured after the
step: the meter export per phase (held as the state vector holds it), the controlled load the slaves
reported, and the command changes sent during the step. The env computes the same formula from its true
powers; the logs only have the measured ones.

**Transitions** (:data:`TRANSITION_SCHEMA`, one row per step ``t -> t+1`` inside an episode): RLlib's
columns ``obs, actions, rewards, new_obs, terminateds, truncateds, eps_id, t`` plus

* ``time_s``: UTC second of ``obs``;
* ``lookahead_obs``: the state ``k`` steps after ``obs`` (``k = --lookahead``), the forward model's target;
* ``lookahead_actions``: the ``k`` actions from ``t`` on, flattened (``3k`` values);
* ``lookahead_valid``: false where the episode ends before ``t + k`` (then ``lookahead_obs`` is the
  episode's last state and missing actions are 0).

Logged episodes end because the data does (a gap, the end of a day, a split boundary), never because the
site reached a terminal state: ``terminateds`` is always false and the last step of an episode has
``truncateds`` true.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from envs.actions import N_ACTIONS, to_unit
from envs.arrow import fixed_list, to_numpy_2d
from envs.reward import RewardWeights, reward_from_power
from envs.state_spec import FEAT, FEATURE_NAMES, N_FEATURES, features_from_signals, spec_dict
from offline_data.align import PH, SIGNAL_NAMES, Aligned

TRANSITIONS_VERSION = "gridrl-transitions-v1"
RLLIB_COLUMNS = ("obs", "actions", "rewards", "new_obs", "terminateds", "truncateds", "eps_id", "t")
_OBS = pa.list_(pa.float32(), N_FEATURES)
_ACT = pa.list_(pa.float32(), N_ACTIONS)

TRANSITION_SCHEMA = pa.schema(
    [
        pa.field("obs", _OBS, nullable=False),
        pa.field("actions", _ACT, nullable=False),
        pa.field("rewards", pa.float32(), nullable=False),
        pa.field("new_obs", _OBS, nullable=False),
        pa.field("terminateds", pa.bool_(), nullable=False),
        pa.field("truncateds", pa.bool_(), nullable=False),
        pa.field("eps_id", pa.string(), nullable=False),
        pa.field("t", pa.int64(), nullable=False),
        pa.field("time_s", pa.int64(), nullable=False),
        pa.field("lookahead_obs", _OBS, nullable=False),
        pa.field("lookahead_actions", pa.list_(pa.float32()), nullable=False),
        pa.field("lookahead_valid", pa.bool_(), nullable=False),
    ],
    metadata={
        "version": TRANSITIONS_VERSION,
        "state_spec_sha256": spec_dict()["sha256"],
        "features": ",".join(FEATURE_NAMES),
    },
)

STEPS_SCHEMA = pa.schema(
    [
        pa.field("second", pa.int64()),
        pa.field("episode", pa.int32()),
        pa.field("obs", _OBS),
        pa.field("actions", _ACT),
        pa.field("rewards", pa.float64()),
    ]
)


def day_steps(
    aligned: Aligned,
    max_power_per_phase_w: float,
    weights: RewardWeights,
    latitude_deg: float,
    longitude_deg: float,
) -> pa.Table:
    """State vector, action and reward for every second of the day's episodes (STEPS_SCHEMA), for a site
    at ``latitude_deg``/``longitude_deg`` (the state's solar features).

    The last second of an episode has NaN action and reward (no step follows it).
    """
    f = aligned.frame
    if f.height == 0:
        return STEPS_SCHEMA.empty_table()
    sig = f.select(SIGNAL_NAMES).to_numpy().astype(np.float64)
    episode = f["episode"].to_numpy()
    ctrl = f.select(f"controlled_w_l{q}" for q in PH).to_numpy()
    changes = f["changes"].to_numpy()
    target = sig[:, [SIGNAL_NAMES.index(f"target_w_l{q}") for q in PH]]
    n = len(f)
    obs = np.empty((n, N_FEATURES))
    actions = np.full((n, N_ACTIONS), np.nan)
    rewards = np.full(n, np.nan)
    export_idx = [FEAT[f"export_w_l{q}"] for q in PH]
    bounds = np.flatnonzero(np.diff(episode)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, n], strict=True):
        obs[lo:hi] = features_from_signals(sig[lo:hi], latitude_deg, longitude_deg)
        actions[lo : hi - 1] = to_unit(target[lo + 1 : hi], max_power_per_phase_w)
        rewards[lo : hi - 1] = reward_from_power(
            obs[lo + 1 : hi][:, export_idx], ctrl[lo + 1 : hi], changes[lo : hi - 1], weights
        )
    return pa.table(
        {
            "second": pa.array(f["second"].to_numpy()),
            "episode": pa.array(episode.astype(np.int32)),
            "obs": fixed_list(obs),
            "actions": fixed_list(actions),
            "rewards": pa.array(rewards),
        },
        schema=STEPS_SCHEMA,
    )


def transitions(steps: pa.Table, date: str, lookahead: int, cuts: tuple[int, ...]) -> dict[int, pa.Table]:
    """Transitions of one day's steps, split at ``cuts`` (UTC seconds, ascending): ``{part: table}``.

    Part ``i`` holds the seconds in ``[cuts[i-1], cuts[i])``; an episode that spans a cut becomes one
    episode per part, and the step across the cut is dropped, so no transition (and no lookahead) crosses
    it.
    """
    if steps.num_rows == 0:
        return {}
    second = steps["second"].to_numpy()
    part = np.searchsorted(np.asarray(cuts, dtype=np.int64), second, side="right")
    episode = steps["episode"].to_numpy().astype(np.int64)
    obs = to_numpy_2d(steps["obs"], N_FEATURES)
    act = to_numpy_2d(steps["actions"], N_ACTIONS)
    rew = steps["rewards"].to_numpy()
    key = episode * 8 + part
    out: dict[int, pa.Table] = {}
    starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    ends = np.r_[starts[1:], len(key)]
    seg_len = ends - starts
    pos = np.arange(len(key)) - np.repeat(starts, seg_len)  # position within the episode part
    last = np.repeat(ends - 1, seg_len)
    is_step = pos < np.repeat(seg_len - 1, seg_len)  # rows followed by another row of the same part
    idx = np.flatnonzero(is_step)
    la = np.minimum(idx + lookahead, last[idx])
    la_actions = np.zeros((len(idx), lookahead * N_ACTIONS), dtype=np.float32)
    for j in range(lookahead):
        src = idx + j
        ok = src < last[idx]
        la_actions[ok, j * N_ACTIONS : (j + 1) * N_ACTIONS] = act[src[ok]]
    uniq, inverse = np.unique(key[idx], return_inverse=True)
    names = pa.array([f"{date}-e{k // 8:03d}-p{k % 8}" for k in uniq], pa.string())
    eps = pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)), names).cast(pa.string())
    table = pa.table(
        {
            "obs": fixed_list(obs[idx]),
            "actions": fixed_list(act[idx]),
            "rewards": pa.array(rew[idx].astype(np.float32)),
            "new_obs": fixed_list(obs[idx + 1]),
            "terminateds": pa.array(np.zeros(len(idx), bool)),
            "truncateds": pa.array(idx + 1 == last[idx]),
            "eps_id": eps,
            "t": pa.array(pos[idx].astype(np.int64)),
            "time_s": pa.array(second[idx]),
            "lookahead_obs": fixed_list(obs[la]),
            "lookahead_actions": pa.ListArray.from_arrays(
                pa.array(np.arange(0, len(idx) + 1, dtype=np.int32) * lookahead * N_ACTIONS),
                pa.array(la_actions.reshape(-1)),
            ),
            "lookahead_valid": pa.array(idx + lookahead <= last[idx]),
        },
        schema=TRANSITION_SCHEMA,
    )
    for p in np.unique(part[idx]):
        out[int(p)] = table.filter(pa.array(part[idx] == p))
    return out


def column_stats(table: pa.Table) -> dict[str, np.ndarray]:
    """Sums for normalisation: count, sum, sum of squares, min, max of obs, actions and rewards."""
    out = {}
    for name, width in (("obs", N_FEATURES), ("actions", N_ACTIONS), ("rewards", 1)):
        x = (
            to_numpy_2d(table[name], width)
            if width > 1 or name != "rewards"
            else table[name].to_numpy().reshape(-1, 1)
        )
        x = x.astype(np.float64)
        out[name] = np.stack(
            [
                np.full(width, len(x)),
                x.sum(0),
                (x * x).sum(0),
                x.min(0) if len(x) else np.full(width, np.inf),
                x.max(0) if len(x) else np.full(width, -np.inf),
            ]
        )
    return out
