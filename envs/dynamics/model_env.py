"""The learned forward model as a gymnasium env: episodes start from logged states and step with the model.

Registered as ``gridrl/ExportModel-v0`` (gymnasium) and, for RLlib, ``gridrl-export-model``
(rllib_configs/envs.py), with the same observation and action spaces as ``gridrl/ExportControl-v0``, so the
export configs train on it with ``env`` switched (rllib_configs/export/ppo_model.yaml).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.actions import N_ACTIONS
from envs.config import from_mapping
from envs.dynamics.data import SplitData, load_split, site_path
from envs.dynamics.model import ForwardModel
from envs.dynamics.rollout import AVAILABILITY_MODES, BALANCE_MODES, HISTORY_S, LoggedContext, ModelStepper
from envs.profiles import DAY_S
from envs.reward import RewardWeights, reward_from_power
from envs.site import load_site
from envs.state_spec import FEAT, FEATURE_HIGH, FEATURE_LOW, N_FEATURES

ENV_ID = "gridrl/ExportModel-v0"
_PH = (1, 2, 3)
EXPORT_L = [FEAT[f"export_w_l{p}"] for p in _PH]
ACKED_L = [FEAT[f"acked_w_l{p}"] for p in _PH]
TARGET_L = [FEAT[f"target_w_l{p}"] for p in _PH]
AVAIL_L = [FEAT[f"available_w_l{p}"] for p in _PH]


@dataclass(frozen=True)
class ModelEnvConfig:
    """Configuration of the model env (the typed form of RLlib's ``env_config``)."""

    model: str = ""
    """Forward-model checkpoint directory, or its training run directory (the newest checkpoint under it)."""
    dataset: str = ""
    """Dataset folder whose logged states start the episodes and whose logs are replayed."""
    split: str = "train"
    """Split the start states come from: train for training a policy, test for judging one."""
    horizon_s: int = 600
    """Episode cap in seconds (1 step = 1 s)."""
    disagreement_threshold: float = 0.15
    """Truncate the episode when the ensemble's disagreement (normalised RMS std of the predicted per-phase
    powers, envs/dynamics/rollout.py) exceeds this; 0 = never. ``gridrl evaluate-model`` reports its
    percentiles under the logged actions (model_metrics.json, disagreement_logged_actions): 0.15 is about
    twice their 99.9th percentile for the 3-member model of the README, never reached by the PI, the rule
    or no control in 600 s daylight rollouts, reached by every uniformly random one."""
    member: str = "random"
    """Which member steps the state: 'random' (one drawn per second, from the env's generator) or 'mean'."""
    availability: str = "energy"
    """Available power in the model's rollouts: 'energy' (a phase stops being available once the policy has
    commanded it the energy the logged controller did before the log's availability dropped: a tank filled
    faster is full sooner) or 'replay' (the logged availability as it is); envs/dynamics/rollout.py."""
    balance: str = "replay"
    """Export in the model's rollouts: 'replay' (the logged export plus the logged minus the predicted
    acknowledged power: PV and base load follow the log) or 'model' (the model's prediction);
    envs/dynamics/rollout.py."""
    min_pv_w: float = 500.0
    """Episodes start only from logged states with at least this much PV (daylight: where control matters)."""
    reward: RewardWeights = field(default_factory=RewardWeights)
    """Reward weights (envs/reward.py); the controlled load is the acknowledged command sum."""
    normalization: str | None = None
    """As ExportEnvConfig.normalization: what the RLlib env creator feeds the networks (None = raw state,
    'default', or a normalization.json path)."""

    def __post_init__(self) -> None:
        if not self.model or not self.dataset or "${" in self.model + self.dataset:
            raise ValueError("model: model and dataset are required (gridrl train --model M --dataset D)")
        if not 1 <= self.horizon_s <= DAY_S:
            raise ValueError(f"horizon_s: must be within [1, {DAY_S}], got {self.horizon_s}")
        if self.member not in ("random", "mean"):
            raise ValueError(f"member: 'random' or 'mean', got {self.member!r}")
        if self.availability not in AVAILABILITY_MODES:
            raise ValueError(f"availability: one of {AVAILABILITY_MODES}, got {self.availability!r}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance: one of {BALANCE_MODES}, got {self.balance!r}")
        if self.disagreement_threshold < 0:
            raise ValueError("disagreement_threshold: must be >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "env_config") -> ModelEnvConfig:
        return from_mapping(cls, dict(data or {}), source=source)


def resolve_model_checkpoint(path: str | Path) -> Path:
    """A forward-model checkpoint: the directory itself, or the newest checkpoint under a run directory."""
    p = Path(path)
    if (p / "model.pt").is_file():
        return p
    found = sorted(p.glob("**/checkpoint_*/model.pt"), key=lambda f: (f.stat().st_mtime, str(f)))
    if not found:
        raise FileNotFoundError(f"{path}: no forward-model checkpoint (model.pt) in it or under it")
    return found[-1].parent


@functools.lru_cache(maxsize=4)
def _load_model(path: str) -> ForwardModel:
    import torch

    torch.set_num_threads(1)
    return ForwardModel.load(resolve_model_checkpoint(path))


@functools.lru_cache(maxsize=4)
def _load_split(dataset: str, split: str) -> SplitData:
    return load_split(dataset, split)


def estimate_command_changes(
    prev_targets_w: np.ndarray, targets_w: np.ndarray, available_w: np.ndarray, deadband_w: float
) -> np.ndarray:
    """Slave command changes per second, estimated from per-phase targets (B, 3): a phase's command (its
    target capped by the available power) moved by more than the deadband, or switched on or off.

    The simulator counts per slave after its dispatcher; with one slave per phase (the default site) the two
    agree except where a slave's own limits (EV minimum, heat-pump minimum times) hold a command.
    """
    prev = np.minimum(prev_targets_w, np.maximum(available_w, 0.0))
    now = np.minimum(targets_w, np.maximum(available_w, 0.0))
    changed = (np.abs(now - prev) > deadband_w) | ((now > 0) != (prev > 0))
    return changed.sum(-1)


class ExportModelEnv(gym.Env):
    """Export control against the learned forward model, from logged states.

    ## Description
    The export-control task of ``gridrl/ExportControl-v0``, with the simulator replaced by the forward model
    (envs/dynamics/model.py) stepped one second at a time in log-replay mode (envs/dynamics/rollout.py): PV,
    missing readings and the setpoint follow the logged day, and available power too, until the policy has
    commanded a phase the energy the logged controller did (``config.availability``); export and acknowledged
    power per phase come from the model; every other feature is computed by the state spec's kernel.

    ## Action Space
    ``Box(-1, 1, (3,), float32)``: per-phase targets, ``[0, max_power_per_phase_w]`` W (envs/actions.py).
    Out-of-range actions are clipped and counted as safety violations in ``info``.

    ## Observation Space
    ``Box((30,), float32)``: the state vector of envs/state_spec.py, as in ``gridrl/ExportControl-v0``.

    ## Rewards
    envs/reward.py's formula on the model's state: net export from ``export_w_l*``, the controlled load from
    ``acked_w_l*`` (the simulator uses the slaves' true power), command changes estimated from the targets
    (:func:`estimate_command_changes`).

    ## Starting State
    A logged state of ``config.split`` with PV above ``min_pv_w`` and enough logged history before it and
    log after it, drawn with the env's generator; the LSTM reads the logged seconds before it.

    ## Episode End
    Never terminates. Truncates after ``horizon_s`` steps, or as soon as the ensemble's disagreement
    exceeds ``disagreement_threshold`` (``info['stopped_by_disagreement']``): beyond that the model does not
    know, and the episode is cut rather than trusted.

    ## Arguments
    ``config``: a :class:`ModelEnvConfig` or its dict form (RLlib's ``env_config``).

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: ModelEnvConfig | dict[str, Any] | None = None, render_mode: str | None = None):
        self.config = config if isinstance(config, ModelEnvConfig) else ModelEnvConfig.from_dict(config)
        cfg = self.config
        self.model = _load_model(cfg.model)
        self.split = _load_split(cfg.dataset, cfg.split)
        site = load_site(site_path(cfg.dataset))
        self.max_power_w = site.control.max_power_per_phase_w
        self.deadband_w = site.control.deadband_w
        starts = self.split.rollout_starts(cfg.horizon_s, HISTORY_S)
        self.starts = starts[self.split.obs[starts, FEAT["pv_w"]] >= cfg.min_pv_w]
        if len(self.starts) == 0:
            raise ValueError(
                f"{cfg.dataset}/{cfg.split}: no logged state with PV >= {cfg.min_pv_w} W and "
                f"{cfg.horizon_s} s of log after it"
            )
        self.stepper = ModelStepper(
            self.model, self.max_power_w, cfg.member, True, cfg.availability, cfg.balance
        )
        self.observation_space = gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, (N_FEATURES,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (N_ACTIONS,), np.float32)
        self.t = 0
        self._state = np.zeros((1, N_FEATURES))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        row = int(self.starts[self.np_random.integers(len(self.starts))])
        ctx = LoggedContext.from_split(self.split, np.array([row]), self.config.horizon_s)
        self._state = self.stepper.reset(ctx, rng=self.np_random)
        self.t = 0
        info = {
            "start_row": row,
            "episode": self.split.episode_ids[self.split.episode[row]],
            "time_s": int(self.split.time_s[row]),
        }
        return self._state[0].astype(np.float32), info

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (N_ACTIONS,):
            a, violation = np.full(N_ACTIONS, -1.0), True
        else:
            violation = not (a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6)
        prev = self._state
        state, dis = self.stepper.step(a[None])
        self._state = state
        changes = estimate_command_changes(
            prev[:, TARGET_L], state[:, TARGET_L], state[:, AVAIL_L], self.deadband_w
        )
        reward = reward_from_power(state[:, EXPORT_L], state[:, ACKED_L], changes, self.config.reward)[0]
        self.t += 1
        stopped = bool(self.config.disagreement_threshold > 0 and dis[0] > self.config.disagreement_threshold)
        truncated = self.t >= self.config.horizon_s or stopped
        info = {
            "export_w": float(state[0, FEAT["export_w"]]),
            "disagreement": float(dis[0]),
            "stopped_by_disagreement": stopped,
            "command_changes": int(changes[0]),
            "safety_violation": violation,
        }
        return state[0].astype(np.float32), float(reward), False, truncated, info


def make_model_env(env_config: dict[str, Any]) -> gym.Env:
    """RLlib env creator of ``gridrl-export-model`` (env_config -> ModelEnvConfig here, once)."""
    from envs.normalization import NormalizeObservation, ObsNormalizer

    config = ModelEnvConfig.from_dict(dict(env_config))
    env = ExportModelEnv(config)
    if config.normalization is not None:
        return NormalizeObservation(env, ObsNormalizer.load(config.normalization))
    return env


def register_model_env() -> None:
    """Register ``gridrl/ExportModel-v0`` (idempotent). Bump the version when stepping or reward change."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="envs.dynamics.model_env:ExportModelEnv", max_episode_steps=DAY_S)


register_model_env()
