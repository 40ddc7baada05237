"""The central-agent CityLearn env for RLlib, registered as ``gridrl-citylearn``.

It is CityLearn's own ``RLlibSingleAgentWrapper`` (flat observations and actions, float rewards) around a
``CityLearnEnv`` with a central agent, plus observation normalisation. The untyped ``env_config`` that
RLlib passes is converted once, here, into :class:`CityLearnEnvConfig`; nothing reads the dict after that.

Observation modes (``observations`` in the config):

- ``normalized`` (default): CityLearn's recommended normalisation, i.e. exactly what its
  ``NormalizedObservationWrapper`` returns (hour, day type and month as cos/sin, every other value min-max
  scaled by CityLearn's observation limits), computed vectorised from the raw vector (about twice as fast
  as the wrapper) by :class:`envs.citylearn.observations.ObservationEncoder`, then clipped to [0, 1];
- ``citylearn``: CityLearn's ``NormalizedObservationWrapper`` itself, then clipped to [0, 1] with a Box
  computed once (CityLearn's ``ClippedObservationWrapper`` cannot be stacked on it with gymnasium >= 1.0);
- ``clipped``: raw values clipped to CityLearn's observation Box.

Episodes: the env picks each episode's window itself, with ``self.np_random`` (seeded by ``reset(seed=...)``),
among the windows of ``episode_time_steps`` that tile the simulation window and do not overlap a held-out
week (``holdout_weeks``), and hands CityLearn that one window. (CityLearn's own random split draws from
``RandomState(seed * (episode + 1))``, which is the same window every episode when the seed is 0.)
``episode: [start, end]`` fixes the window instead: that is how ``gridrl evaluate`` runs a held-out week
with the training env's scaling (the simulation window, hence CityLearn's observation limits, is the same).

Actions (``action_mode``): ``direct`` (default) sends the policy's action to CityLearn; ``rbc_residual``
sends ``clip(RBC(state) + residual_scale * action)``, the rule-based controller of
:mod:`envs.citylearn.devices` plus the policy's correction, so a policy starts at the RBC (zero correction)
and learns only where to depart from it; with ``residual_per: kind`` the policy gives one correction per
kind of device (every battery the same, every charger another) instead of one per device. A bundle of such
a policy runs the same RBC from the raw observation (serve/citylearn_bundle.py).

The schema may be any CityLearn 3.0.2 schema: :func:`envs.citylearn.prepare.prepare_schema` puts our reward
in place of the schema's and drops, or names, what CityLearn 3.0.2 cannot load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from envs.citylearn.observations import ObservationEncoder
from envs.config import ConfigError, from_mapping, to_mapping

ENV_NAME = "gridrl-citylearn"
GYM_ID = "gridrl/CityLearn-v1"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CityLearnEnvConfig:
    """Typed ``env_config`` of ``gridrl-citylearn`` (keys of the RLlib ``env_config`` dict)."""

    schema: str
    """Path to a CityLearn schema.json, or a folder holding one (relative: to the working directory, else to
    the repository root), or a dataset folder name under ``CITYLEARN_LOCAL_DATASETS_PATH``. Nothing is
    downloaded."""
    start_time_step: int | None = None
    """First step of the simulation within the schema's data (None: the schema's)."""
    end_time_step: int | None = None
    """Last step (inclusive) of the simulation (None: the schema's)."""
    episode_time_steps: int | None = None
    """Split the simulation into episodes of this many steps (None: one episode)."""
    random_episode_split: bool = False
    """Pick the episode window at random at each reset (CityLearn's random split, seeded)."""
    observations: Literal["normalized", "citylearn", "clipped"] = "normalized"
    """Observation mode (see the module docstring)."""
    reward: Literal["multi_objective", "schema"] = "multi_objective"
    """``multi_objective``: :class:`envs.citylearn.reward.MultiObjectiveReward`; ``schema``: the schema's."""
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`envs.citylearn.reward.RewardConfig` (weights, scales); they override the schema's."""
    seed: int | None = None
    """CityLearn's random_seed (None: the schema's); ``reset(seed=...)`` overrides it."""
    holdout_weeks: tuple[int, ...] = ()
    """Weeks (0-based, 7 days of steps each, counted from the simulation's first step) never used as training
    episodes; ``gridrl evaluate`` runs its held-out evaluation on them."""
    episode: tuple[int, int] | None = None
    """One fixed episode window [start, end] (steps, inclusive) within the simulation window: every reset
    runs it (evaluation of a held-out week)."""
    action_mode: Literal["direct", "rbc_residual"] = "direct"
    """``direct``: the action goes to CityLearn; ``rbc_residual``: the RBC's action plus
    ``residual_scale`` x the action (module docstring)."""
    residual_scale: float = 0.5
    """Scale of the policy's correction in ``rbc_residual`` mode (action units per unit of policy output)."""
    residual_per: Literal["device", "kind"] = "device"
    """``rbc_residual`` mode: one correction per device (``device``), or one per kind of device (``kind``):
    every battery gets the same correction, every charger another, so the policy picks two numbers a step
    whatever the number of buildings. Ignored in ``direct`` mode."""

    def __post_init__(self) -> None:
        if self.episode_time_steps is not None and self.episode_time_steps < 2:
            raise ValueError(f"episode_time_steps: must be >= 2, got {self.episode_time_steps}")
        for name in ("start_time_step", "end_time_step"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name}: must be >= 0, got {v}")
        if any(w < 0 for w in self.holdout_weeks):
            raise ValueError(f"holdout_weeks: weeks are >= 0, got {list(self.holdout_weeks)}")
        if self.episode is not None and not 0 <= self.episode[0] < self.episode[1]:
            raise ValueError(f"episode: must be [start, end] with 0 <= start < end, got {list(self.episode)}")
        if not self.residual_scale > 0:
            raise ValueError(f"residual_scale: must be > 0, got {self.residual_scale}")


def resolve_schema(schema: str | Path) -> Path:
    """The schema.json that ``schema`` names (file, folder, or dataset under CITYLEARN_LOCAL_DATASETS_PATH).

    Raises:
        ConfigError: Nothing found; the message lists where it looked.
    """
    p = Path(os.path.expanduser(str(schema)))
    candidates = [p, p / "schema.json"]
    if not p.is_absolute():  # Tune may run the env in a trial folder: also try the repository root
        candidates += [REPO_ROOT / p, REPO_ROOT / p / "schema.json"]
    for root in filter(None, os.environ.get("CITYLEARN_LOCAL_DATASETS_PATH", "").split(os.pathsep)):
        candidates += [Path(root) / str(schema) / "schema.json", Path(root) / str(schema)]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ConfigError(None, "schema", f"no schema.json found; looked at {[str(c) for c in candidates]}")


def citylearn_kwargs(config: CityLearnEnvConfig) -> dict[str, Any]:
    """Keyword arguments of ``CityLearnEnv`` for ``config``: the prepared schema dict, central agent."""
    from envs.citylearn.prepare import prepare_schema, read_schema

    path = resolve_schema(config.schema)
    window = {"start_time_step": config.start_time_step, "end_time_step": config.end_time_step}
    if config.reward == "multi_objective":
        schema = prepare_schema(path, config.reward_kwargs, **window)
    elif config.reward_kwargs:
        raise ConfigError(None, "reward_kwargs", "only used with reward: multi_objective")
    else:
        schema = prepare_schema(path, **window)
        schema["reward_function"] = read_schema(path).get("reward_function")
    kwargs: dict[str, Any] = {"schema": schema, "central_agent": True}
    for key, name in (
        ("simulation_start_time_step", "start_time_step"),
        ("simulation_end_time_step", "end_time_step"),
        ("random_seed", "seed"),
    ):
        if getattr(config, name) is not None:
            kwargs[key] = getattr(config, name)
    return kwargs


def week_steps(seconds_per_time_step: float) -> int:
    """Steps in 7 days."""
    return int(round(7 * 86400 / float(seconds_per_time_step)))


def episode_windows(config: CityLearnEnvConfig, first: int, last: int, seconds_per_time_step: float) -> list[
        tuple[int, int]]:  # fmt: skip
    """The training episodes' windows [start, end] within the simulation window [first, last] (see the
    module docstring); ``config.episode`` alone if it is set.

    Raises:
        ConfigError: No window is left (held-out weeks cover the whole simulation), or ``episode`` lies
            outside the simulation window.
    """
    if config.episode is not None:
        start, end = config.episode
        if start < first or end > last:
            raise ConfigError(
                None, "episode", f"[{start}, {end}] is outside the simulation window [{first}, {last}]"
            )
        return [(start, end)]
    n = config.episode_time_steps or (last - first + 1)
    if n > last - first + 1:
        raise ConfigError(
            None,
            "episode_time_steps",
            f"{n} steps do not fit in the simulation [{first}, {last}] ({last - first + 1} steps): use "
            "shorter episodes (gridrl citylearn train --episode-steps) or a longer simulation",
        )
    week = week_steps(seconds_per_time_step)
    held = [(first + w * week, first + (w + 1) * week - 1) for w in config.holdout_weeks]
    windows = []
    for start in range(first, last - n + 2, n):
        end = start + n - 1
        if not any(start <= h1 and h0 <= end for h0, h1 in held):
            windows.append((start, end))
    if not windows:
        raise ConfigError(None, "holdout_weeks", f"no training window of {n} steps left in [{first}, {last}]")
    return windows


def _find_wrapper(env: Any, cls: type) -> Any:
    while not isinstance(env, cls):
        env = env.env
    return env


class CityLearnRLlibEnv(gym.Env):
    """A CityLearn district (or the Iquitos mall) as one central agent.

    ## Description
    Each step is one of the schema's time steps (an hour for the mall and the 2022 challenge district).
    The agent sets every building's battery and every EV charger at once; CityLearn simulates the step.

    ## Action Space
    ``Box(-1, 1, (n_actions,), float32)``, CityLearn's central action vector in the order of
    ``action_names``: per building, ``electrical_storage`` (share of the battery's nominal power,
    + charge / - discharge) then ``electric_vehicle_storage_<charger>`` (share of the charger's maximum
    power; negative values discharge where the charger allows it, the mall's do not). Out-of-range values
    are clipped. Mall: 129 actions (1 battery + 128 sockets).

    ## Observation Space
    ``Box(0, 1, (n_obs,), float32)`` in the default mode; the names are in ``observation_names``:

    | index | name | unit (before scaling) | bounds |
    | --- | --- | --- | --- |
    | 0-5 | month, day_type, hour as cos/sin | - | [0, 1] |
    | ... | outdoor temperature and its 6/12/24 h forecasts | C | [0, 1] |
    | ... | diffuse, direct irradiance and forecasts | W/m2 | [0, 1] |
    | ... | electricity price and forecasts | currency/kWh | [0, 1] |
    | ... | non_shiftable_load, solar_generation, net_electricity_consumption | kWh | [0, 1] |
    | ... | electrical_storage_soc | - | [0, 1] |
    | ... | per charger: connected, hours to departure, required SoC, SoC, incoming | -, h, - | [0, 1] |

    The mall's schema gives 666 values; the 2022 district 151. Scaling limits are CityLearn's own.

    ## Rewards
    :class:`envs.citylearn.reward.MultiObjectiveReward` (formula in its module), or the schema's reward with
    ``reward: schema``. ``info["reward_terms"]`` holds the unweighted terms of the step.

    ## Starting State
    The schema's: battery SoC ``initial_soc``, vehicles at the SoC their sessions arrive with, the first
    step of the episode window (random if ``random_episode_split``, from the seed).

    ## Episode End
    Terminated at the last step of the episode window (CityLearn ends it); never truncated by the env.

    ## Arguments
    ``CityLearnRLlibEnv(config)`` with a :class:`CityLearnEnvConfig` or a mapping of its fields (RLlib's
    ``env_config``); ``make_citylearn_env(env_config)`` does the same for ``ray.tune.register_env``.

    ## Version History
    - v0: first version (CityLearn 3.0.2).
    - v1: the EV constraint in the reward; any schema (prepared); held-out weeks; RBC-residual actions.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: CityLearnEnvConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        from citylearn.wrappers import NormalizedObservationWrapper, RLlibSingleAgentWrapper

        data = dict(config) if isinstance(config, Mapping) else ({} if config is None else config)
        if kwargs:
            data = {**(to_mapping(data) if isinstance(data, CityLearnEnvConfig) else data), **kwargs}
        self.config: CityLearnEnvConfig = from_mapping(CityLearnEnvConfig, data, source="env_config")
        from envs.citylearn.prepare import citylearn_errors

        wrappers = [NormalizedObservationWrapper] if self.config.observations == "citylearn" else []
        kwargs = citylearn_kwargs(self.config)
        with citylearn_errors(resolve_schema(self.config.schema), kwargs["schema"]):
            self._inner = RLlibSingleAgentWrapper({"env_kwargs": kwargs, "wrappers": wrappers})
        self.citylearn = self._inner.unwrapped
        tracker = self.citylearn.episode_tracker
        self.windows = episode_windows(
            self.config, tracker.simulation_start_time_step, tracker.simulation_end_time_step,
            self.citylearn.seconds_per_time_step,
        )  # fmt: skip
        self._episode = -1
        self.citylearn.random_episode_split = False
        self.citylearn.rolling_episode_split = False
        self.citylearn.episode_time_steps = [list(self.windows[0])]
        reward = self.citylearn.reward_function
        if hasattr(reward, "calibrate"):
            reward.calibrate(self.citylearn)
        self.action_space = gym.spaces.Box(-1.0, 1.0, self._inner.action_space.shape, np.float32)
        self.encoder: ObservationEncoder | None = None
        """Raw observation -> this env's observation (None in ``citylearn`` mode); a bundle carries it."""
        if self.config.observations == "normalized":
            self.encoder = ObservationEncoder.from_env(self.citylearn, "normalized")
            n = self.encoder.n
            self.observation_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)
            self.observation_names = list(self.encoder.names)
        elif self.config.observations == "citylearn":
            n = self._inner.observation_space.shape[0]
            self.observation_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)
            self.observation_names = list(
                _find_wrapper(self._inner, NormalizedObservationWrapper).observation_names[0]
            )
        else:
            box = self.citylearn.observation_space[0]
            self.observation_space = gym.spaces.Box(box.low, box.high, box.shape, np.float32)
            self.observation_names = list(self.citylearn.observation_names[0])
            self.encoder = ObservationEncoder.from_env(self.citylearn, "clipped")
        self.action_names = list(self.citylearn.action_names[0])
        self.devices = None
        self.residual_groups: np.ndarray | None = None
        """Each action slot's index into the policy's action (``residual_per: kind``), else None."""
        if self.config.action_mode == "rbc_residual":
            from envs.citylearn.devices import DeviceTable

            self.devices = DeviceTable.from_env(self.citylearn)
            if self.config.residual_per == "kind":
                kinds, self.residual_groups = self.devices.kind_groups()
                self.action_space = gym.spaces.Box(-1.0, 1.0, (len(kinds),), np.float32)

    def _obs(self, raw: np.ndarray) -> np.ndarray:
        if self.encoder is not None:
            return self.encoder(raw)
        box = self.observation_space  # citylearn mode: scaled by CityLearn's wrapper, clipped here
        return np.clip(np.asarray(raw, dtype=np.float32), box.low, box.high)

    def _info(self) -> dict[str, Any]:
        terms = getattr(self.citylearn.reward_function, "last_terms", None)
        info: dict[str, Any] = {"time_step": int(self.citylearn.time_step)}
        if terms is not None:
            info["reward_terms"] = dict(terms)
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._episode += 1
        if self.config.random_episode_split:
            window = self.windows[int(self.np_random.integers(len(self.windows)))]
        else:
            window = self.windows[self._episode % len(self.windows)]
        self.citylearn.episode_time_steps = [list(window)]
        raw, _ = self._inner.reset(seed=seed, options=options)
        return self._obs(raw), self._info()

    def use_window(self, start: int, end: int) -> None:
        """Run every following episode on [start, end] (steps, within the simulation window)."""
        tracker = self.citylearn.episode_tracker
        if not tracker.simulation_start_time_step <= start < end <= tracker.simulation_end_time_step:
            raise ValueError(
                f"episode window [{start}, {end}] is outside the simulation window "
                f"[{tracker.simulation_start_time_step}, {tracker.simulation_end_time_step}]"
            )
        self.windows = [(int(start), int(end))]
        self._episode = -1

    def heldout_windows(self) -> list[tuple[int, int]]:
        """The windows of the config's held-out weeks (cut at the simulation's last step)."""
        tracker = self.citylearn.episode_tracker
        first, last = tracker.simulation_start_time_step, tracker.simulation_end_time_step
        week = week_steps(self.citylearn.seconds_per_time_step)
        out = []
        for w in self.config.holdout_weeks:
            start, end = first + w * week, min(first + (w + 1) * week - 1, last)
            if start >= last:
                n = (last - first + 1) // week
                fits = f"weeks 0-{n - 1} of this simulation, or none" if n else "none (less than a week)"
                problem = f"week {w} starts at step {start}, after the simulation's last step {last}"
                hint = f"hold out {fits} (gridrl citylearn train --holdout-weeks)"
                raise ConfigError(None, "holdout_weeks", f"{problem}: {hint}")
            out.append((start, end))
        return out

    def to_citylearn(self, action: np.ndarray) -> np.ndarray:
        """The action CityLearn gets for the policy's ``action`` (see ``action_mode``), in [-1, 1]."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_space.shape), -1.0, 1.0)
        if self.devices is None:
            return a
        groups = self.residual_groups
        return residual_action(self.citylearn, self.devices, a, self.config.residual_scale, groups)

    def step(self, action: np.ndarray):
        a = self.to_citylearn(action)
        raw, reward, terminated, truncated, _ = self._inner.step(list(a))
        return self._obs(raw), float(reward), bool(terminated), bool(truncated), self._info()

    def evaluate(self, **kwargs: Any) -> Any:
        """CityLearn's ``evaluate()`` of the current episode (a DataFrame)."""
        return self.citylearn.evaluate(**kwargs)


def residual_action(
    citylearn: Any, devices: Any, action: np.ndarray, scale: float, groups: np.ndarray | None = None
) -> np.ndarray:
    """``clip(RBC(state) + scale * action)`` within each device's bounds (``action_mode: rbc_residual``).

    Args:
        citylearn: The CityLearnEnv (the RBC reads its state).
        devices: Its :class:`envs.citylearn.devices.DeviceTable`.
        action: The policy's correction in [-1, 1]: one per action slot, or one per group.
        scale: ``residual_scale``.
        groups: Each slot's index into ``action`` (``residual_per: kind``,
            :meth:`~envs.citylearn.devices.DeviceTable.kind_groups`); None: one correction per slot.
    """
    from envs.citylearn.devices import rbc_action, state_from_env

    base = rbc_action(devices, state_from_env(citylearn, devices)).astype(np.float64)
    low, high = devices.action_bounds()
    correction = np.asarray(action, dtype=np.float64)
    if groups is not None:
        correction = correction[groups]
    return np.clip(base + scale * correction, low, high)


def make_citylearn_env(env_config: Mapping[str, Any]) -> CityLearnRLlibEnv:
    """Env creator for ``ray.tune.register_env(ENV_NAME, make_citylearn_env)``.

    Args:
        env_config: RLlib's env_config (a dict or EnvContext) with the fields of :class:`CityLearnEnvConfig`.
    """
    return CityLearnRLlibEnv(dict(env_config))


def register() -> None:
    """Register ``gridrl-citylearn`` with Ray Tune / RLlib and ``gridrl/CityLearn-v0`` with gymnasium.

    No ``max_episode_steps``: the episode length comes from the schema and the config, and CityLearn
    terminates the episode itself.
    """
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_citylearn_env)
    if GYM_ID not in gym.registry:
        gym.register(id=GYM_ID, entry_point="envs.citylearn.env:CityLearnRLlibEnv")
