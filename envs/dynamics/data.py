"""The dataset splits as the forward model reads them: windows of consecutive seconds inside an episode.

A dataset is the output of ``gridrl data build`` (offline_data/): ``DATASET/{train,val,test}/*.parquet`` in
offline_data/transitions.py's schema, and ``DATASET/normalization.json`` (train-split statistics). A
window of length ``L`` starting at row ``i`` is the states ``obs[i .. i+L-1]``, the actions of rows
``i .. i+L-1`` and the states after them, ``new_obs[i .. i+L-1]``; rows ``i .. i+L-1`` belong to one
episode with consecutive ``t``. For ``L = k`` the actions are the row's ``lookahead_actions`` and the last
state its ``lookahead_obs`` (tests/test_dynamics.py checks it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from envs.actions import N_ACTIONS
from envs.arrow import to_numpy_2d
from envs.normalization import ObsNormalizer
from envs.state_spec import FEAT, FEATURE_NAMES, N_FEATURES

SPLITS = ("train", "val", "test")
_AVAIL = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]
_KWH = [FEAT[f"acked_kwh_since_available_l{p}"] for p in (1, 2, 3)]
BUDGET_GAP_S = 60  # availability_budgets: a log resumed within this many seconds continues a segment
COLUMNS = ("obs", "actions", "rewards", "new_obs", "eps_id", "t", "time_s")


@dataclass
class SplitData:
    """One split in memory, rows sorted by (episode, t)."""

    obs: np.ndarray
    """(N, F) float32 raw state vectors."""
    actions: np.ndarray
    """(N, 3) float32 actions in [-1, 1]."""
    new_obs: np.ndarray
    """(N, F) float32 state after the action."""
    episode: np.ndarray
    """(N,) int64 episode code (index into ``episode_ids``)."""
    t: np.ndarray
    """(N,) int64 step within the episode."""
    time_s: np.ndarray
    """(N,) int64 UTC second of ``obs``."""
    episode_ids: tuple[str, ...]
    """The dataset's ``eps_id`` of each episode code."""
    rewards: np.ndarray | None = None
    """(N,) float32 rewards of the steps (offline_data/transitions.py), where read."""
    _budgets: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.t)

    def run_left(self) -> np.ndarray:
        """(N,) rows from each row to the end of its contiguous run (one episode, t + 1 per row)."""
        n = len(self)
        brk = np.ones(n, bool)
        brk[:-1] = (self.episode[1:] != self.episode[:-1]) | (self.t[1:] != self.t[:-1] + 1)
        ends = np.flatnonzero(brk)
        end_of = ends[np.searchsorted(ends, np.arange(n))]
        return end_of - np.arange(n) + 1

    def run_first(self) -> np.ndarray:
        """(N,) index of the first row of each row's contiguous run."""
        n = len(self)
        brk = np.ones(n, bool)
        brk[1:] = (self.episode[1:] != self.episode[:-1]) | (self.t[1:] != self.t[:-1] + 1)
        firsts = np.flatnonzero(brk)
        return firsts[np.searchsorted(firsts, np.arange(n), side="right") - 1]

    def availability_budgets(self) -> np.ndarray:
        """(N, 3) per row and phase: the acknowledged energy (kWh) the logged controller commanded to the
        phase from the start of the row's availability segment (``available_w_l*`` > 0 without a break) to
        the last second before the log's availability dropped, i.e. ``acked_kwh_since_available_l*`` at the
        segment's last second. ``inf`` where the phase is unavailable at the row, or its segment runs to the
        end of the log without a logged drop (the log does not say how much more it would have taken). A
        segment open at the end of a contiguous run continues in the next run if the log resumes within
        ``BUDGET_GAP_S`` with the phase available (episodes end at quarantined rows; a tank goes on filling).

        What a real log holds (state spec v2's headroom features): the model rollouts use it to end a phase's
        availability once a policy has commanded it that much energy (envs/dynamics/rollout.py). Computed
        once per split.
        """
        if self._budgets is not None:
            return self._budgets
        n = len(self)
        avail = self.obs[:, _AVAIL] > 0.0
        kwh = self.obs[:, _KWH].astype(np.float64)
        last = np.zeros(n, bool)  # last row of its contiguous run
        if n:
            last[:-1] = (self.episode[1:] != self.episode[:-1]) | (self.t[1:] != self.t[:-1] + 1)
            last[-1] = True
        out = np.full((n, 3), np.inf)
        for j in range(3):
            a = avail[:, j]
            nxt = np.zeros(n, bool)  # available at the next row of the same run
            nxt[:-1] = a[1:] & ~last[:-1]
            after = self.new_obs[:, _AVAIL[j]] > 0.0  # the state after a run's last row
            end = a & ~nxt  # the segment's last row in the split
            dropped = end & (~last | ~after)  # ... followed by a logged drop
            seg_end = np.flatnonzero(end)
            if not len(seg_end):
                continue
            rows = np.flatnonzero(a)
            e = seg_end[np.searchsorted(seg_end, rows)]  # the end of each available row's segment
            budget_at_end = np.where(dropped, kwh[:, j], np.inf)
            # A segment open at its run's end goes on in the next run when the log resumes within
            # BUDGET_GAP_S still available (a quarantined row ends an episode, not the tank's filling):
            # its budget is this run's energy plus the next run's budget (whose counter restarted at 0).
            run_ends = np.flatnonzero(last)
            for r in range(len(run_ends) - 2, -1, -1):
                end_row, nxt_row = run_ends[r], run_ends[r] + 1
                gap = self.time_s[nxt_row] - self.time_s[end_row]
                if end[end_row] and not dropped[end_row] and a[nxt_row] and 0 < gap <= BUDGET_GAP_S:
                    nxt_end = seg_end[np.searchsorted(seg_end, nxt_row)]
                    budget_at_end[end_row] = kwh[end_row, j] + budget_at_end[nxt_end]
            out[rows, j] = budget_at_end[e]
        self._budgets = out
        return out

    def window_starts(self, length: int) -> np.ndarray:
        """Rows that start a window of ``length`` consecutive steps inside one episode."""
        return np.flatnonzero(self.run_left() >= length)

    def window(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(states (B, L, F), actions (B, L, 3), states 1 s later (B, L, F)) of windows from ``starts``."""
        idx = np.asarray(starts)[:, None] + np.arange(length)
        return self.obs[idx], self.actions[idx], self.new_obs[idx]

    def states(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(B, L + 1, F): the state at each start and the ``length`` logged states after it."""
        idx = np.asarray(starts)[:, None] + np.arange(length)
        return np.concatenate([self.obs[starts][:, None], self.new_obs[idx]], axis=1)

    def rollout_starts(self, horizon: int, history: int) -> np.ndarray:
        """Rows with ``history`` rows before and ``horizon`` steps after them, all in one contiguous run."""
        n = np.arange(len(self))
        return np.flatnonzero((self.run_left() >= horizon) & (n - self.run_first() >= history))


def split_dir(dataset: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split: one of {SPLITS}, got {split!r}")
    d = Path(dataset) / split
    if not d.is_dir() or not any(d.glob("*.parquet")):
        raise FileNotFoundError(f"{d}: no Parquet files (build the dataset with `gridrl data build`)")
    return d


def load_split(dataset: str | Path, split: str) -> SplitData:
    """Read one split of a dataset; checks that its features are the state spec's."""
    d = split_dir(dataset, split)
    table = pq.read_table(sorted(d.glob("*.parquet")), columns=list(COLUMNS))
    meta = pq.read_schema(sorted(d.glob("*.parquet"))[0]).metadata or {}
    names = meta.get(b"features", b"").decode()
    if names and tuple(names.split(",")) != FEATURE_NAMES:
        raise ValueError(f"{d}: its features differ from envs/state_spec.py (rebuild the dataset)")
    eps = table["eps_id"].to_numpy(zero_copy_only=False).astype(str)
    episode_ids, episode = np.unique(eps, return_inverse=True)
    t = table["t"].to_numpy().astype(np.int64)
    order = np.lexsort((t, episode))
    return SplitData(
        obs=to_numpy_2d(table["obs"], N_FEATURES)[order].astype(np.float32),
        actions=to_numpy_2d(table["actions"], N_ACTIONS)[order].astype(np.float32),
        new_obs=to_numpy_2d(table["new_obs"], N_FEATURES)[order].astype(np.float32),
        episode=episode[order].astype(np.int64),
        t=t[order],
        time_s=table["time_s"].to_numpy().astype(np.int64)[order],
        episode_ids=tuple(str(e) for e in episode_ids),
        rewards=table["rewards"].to_numpy().astype(np.float32)[order],
    )


def load_normalizer(dataset: str | Path) -> ObsNormalizer:
    """The dataset's ``normalization.json`` (train-split statistics)."""
    return ObsNormalizer.load(Path(dataset) / "normalization.json")


def lookahead(dataset: str | Path) -> int:
    """k of the dataset's lookahead (``config.lookahead`` of manifest.json)."""
    p = Path(dataset) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: missing (a folder without it is not a dataset)")
    return int(json.loads(p.read_text())["config"]["lookahead"])


def site_path(dataset: str | Path) -> str | None:
    """The site YAML the dataset was built with (``config.site_resolved``), when the manifest names one."""
    p = Path(dataset) / "manifest.json"
    site = json.loads(p.read_text()).get("config", {}).get("site_resolved") if p.is_file() else None
    return site if site and Path(site).is_file() else None


def delta_std(split: SplitData, normalizer: ObsNormalizer, max_rows: int = 200_000) -> np.ndarray:
    """Per-feature std of the normalised 1 s change ``z(s_{t+1}) - z(s_t)`` (the model head's scale)."""
    rows = np.arange(len(split))
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).astype(np.int64)]
    return (normalizer(split.new_obs[rows]) - normalizer(split.obs[rows])).std(0).astype(np.float32)
