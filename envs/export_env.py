"""Gymnasium environments of the export-control domain (single site-day and a batched vector env)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

from envs.actions import N_ACTIONS, to_watts
from envs.config import from_mapping
from envs.controllers import PIController, continuous_power, gated_w, preference_targets
from envs.profiles import DAY_S, SCENARIOS, DayProfile, day_profile
from envs.reward import RewardWeights
from envs.simulator import (
    O_CHANGES,
    O_EXPORT,
    O_IMBALANCE,
    O_IMPORT_CTRL,
    O_REWARD,
    Simulator,
    Window,
)
from envs.site import SITE_FEATURE_NAMES, Site, load_site, site_features
from envs.state_spec import FEATURE_HIGH, FEATURE_LOW, N_FEATURES

ENV_ID = "gridrl/ExportControl-v0"
VECTOR_ENV_ID = "gridrl/ExportControlVector-v0"


@dataclass(frozen=True)
class ExportEnvConfig:
    """Configuration of the export-control env (the typed form of RLlib's ``env_config``)."""

    site: str | None = None
    """Path of a site YAML file; None = the shipped default site (envs/sites/default.yaml)."""
    scenario: str = "random"
    """Weather: one of clear, broken_clouds, overcast, summer, winter; 'random' draws one per episode."""
    episode_s: int = 3600
    """Episode length in seconds (1 step = 1 s); 86400 = a whole day."""
    start_s: int | None = None
    """Start of the window (local seconds after midnight); None = drawn in daylight (or 0 for a day)."""
    reward: RewardWeights = field(default_factory=RewardWeights)
    """Reward weights (envs/reward.py)."""
    perfect_link: bool = False
    """Commands arrive at the end of their step and are never lost (the oracle's privilege)."""
    record_events: bool = False
    """Keep a row per command sent (for raw logs and tests)."""
    normalization: str | None = None
    """What the RLlib env creator feeds the networks: None = the raw state vector; 'default' = normalised
    with envs/normalization_default.json; a path = with that normalization.json (a dataset's). The env
    class itself always emits the raw state vector (the contract of envs/state_spec.py)."""
    day_of_year: int | None = None
    """Simulate this calendar day of 2025 (1..365); None = drawn near the scenario's day. The raw-log
    generator (offline_data/generate.py) sets it so that simulated days follow each other."""
    site_draws: int = 0
    """0: every episode on ``site``. N > 0: every episode on a site drawn around ``site`` by
    envs/site_sampler.py (PV, latitude, devices' phases and sizes, loads, link; same devices and action
    bound), so a policy learns sites, not one site. The vector env splits its members into N groups, one
    drawn site each (one simulator kernel call per group and step)."""
    reward_floor_kwh: float | None = None
    """Training signal only (the vector env): None = the reward as envs/reward.py writes it. A number: each
    episode's rewards are divided by its window's surplus energy (PV less base load, kWh, known to the
    simulator at reset) plus this floor, times the floor, so that a dull day's few kWh weigh as much as a
    clear day's many: the metrics of record judge each day in per cent of the PI's export, a kWh reward
    judges the sum, where clear days drown the dull ones."""
    draw_phases: bool = True
    """With ``site_draws``: draw which phase each device is on (True), or keep ``site``'s layout (False:
    for a policy that is told its site's layout in its configuration, rllib_configs/pi_residual.py)."""
    warm_start: str = "none"
    """Where a window starts from. 'none': slaves off, tanks near their configured fill, the EV with its
    whole demand, whatever the hour. 'pi': the state the site's PI leaves at the window start: the day is
    simulated from 00:00 under the PI (envs/controllers.py) and the episode takes over at ``start_s``, so an
    afternoon window starts with the tanks and the EV as a day of control left them (and the headroom
    features counted from midnight). Costs the simulation of the hours before the window at each reset.
    In the vector env the members of a group share the group's first member's window start."""
    decision_s: int = 1
    """1: the agent sets the per-phase targets every second (its action, 3 numbers). N > 1 (the vector env
    only): the agent supervises the site's PI. Its action is one number, the PI's dispatch preference in
    [-1, 1] (envs/controllers.py ``preference_targets``: 0 = the PI's spread, +1 = the water heaters
    first, -1 = last), held for N seconds, while the PI sets the targets every second; its reward is the
    mean of those N seconds' rewards. A preference that matters over hours (which devices store a clear
    morning's surplus) is then a few hundred decisions, not tens of thousands of 1 s steps."""
    preference_gate: float = 0.0
    """With ``decision_s`` > 1: a positive preference holds only while the PI's total is under this many times
    the smallest power that starts one of the member's site's heat pumps or EV chargers (envs/controllers.py
    ``gated_w``); 0: always. A supervising module must carry the same ``pi_residual.preference_gate``."""
    reward_baseline: str = "none"
    """Training signal only (the vector env). 'none': the reward as envs/reward.py writes it. 'pi': minus what
    the site's PI earns on the same day: every member has a twin simulator, reset with copies of its random
    generators (the simulator draws all of a day's randomness at reset: the same PV, loads, meter noise and
    link), run by the PI (envs/controllers.py ``preference_targets`` at preference 0), and the reward is the
    member's less its twin's, second by second. A day's return is then the policy's gain over the PI on that
    very day, not the weather's and the site's spread of returns, which drowned it (a supervising policy
    that exported 34 % more than the PI on one drawn site's broken-cloud day had stayed near its initial
    preference). Costs a second simulation per member."""
    site_features: bool = False
    """The vector env only: each member's observation is its state vector followed by its site's
    envs/site.py ``site_features`` (PV and the devices' storage, whatever their phases), so that a
    supervising policy trained on drawn sites can tell them apart (deployed, rllib_configs/policy.py
    ``Policy.for_site`` tells it its site; the state vector stays the contract)."""

    def __post_init__(self) -> None:
        if not 60 <= self.episode_s <= DAY_S:
            raise ValueError(f"episode_s: must be within [60, {DAY_S}], got {self.episode_s}")
        if self.scenario != "random" and self.scenario not in SCENARIOS:
            raise ValueError(f"scenario: must be 'random' or one of {sorted(SCENARIOS)}, got {self.scenario!r}")
        if self.start_s is not None and not 0 <= self.start_s <= DAY_S - self.episode_s:
            raise ValueError(f"start_s: window [{self.start_s}, +{self.episode_s}] does not fit in a day")
        if self.day_of_year is not None and not 1 <= self.day_of_year <= 365:
            raise ValueError(f"day_of_year: must be within [1, 365], got {self.day_of_year}")
        if self.site_draws < 0:
            raise ValueError(f"site_draws: must be >= 0, got {self.site_draws}")
        if self.reward_floor_kwh is not None and self.reward_floor_kwh <= 0:
            raise ValueError(f"reward_floor_kwh: must be > 0 (or null), got {self.reward_floor_kwh}")
        if self.warm_start not in ("none", "pi"):
            raise ValueError(f"warm_start: must be 'none' or 'pi', got {self.warm_start!r}")
        if self.preference_gate < 0:
            raise ValueError(f"preference_gate: must be >= 0 (0: no gate), got {self.preference_gate!r}")
        if self.reward_baseline not in ("none", "pi"):
            raise ValueError(f"reward_baseline: must be 'none' or 'pi', got {self.reward_baseline!r}")
        if self.decision_s < 1 or self.episode_s % self.decision_s:
            raise ValueError(
                f"decision_s: must be >= 1 and divide episode_s ({self.episode_s}), got {self.decision_s}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "env_config") -> ExportEnvConfig:
        """Convert RLlib's untyped ``env_config`` once, at the boundary (errors name the key)."""
        return from_mapping(cls, dict(data or {}), source=source)

    def load_site(self) -> Site:
        return load_site(self.site)

    def draw_site(self, rng: np.random.Generator) -> Site:
        """A site drawn around ``site`` for the next episode (used when ``site_draws`` > 0)."""
        from envs.site_sampler import random_site

        drawn = random_site(rng, "drawn", self.site, self.draw_phases)
        return from_mapping(Site, drawn, source="envs/site_sampler.py")

    def draw_episode(self, rng: np.random.Generator, site: Site) -> tuple[DayProfile, Window]:
        """Draw a day (scenario) and a window in it from ``rng``."""
        scenario = self.scenario if self.scenario != "random" else str(rng.choice(sorted(SCENARIOS)))
        day = day_profile(rng, site, scenario, self.day_of_year)
        if self.start_s is not None:
            start = self.start_s
        elif self.episode_s >= DAY_S:
            start = 0
        else:  # daylight: between 07:00 and 19:00 local
            lo, hi = 7 * 3600, max(7 * 3600, 19 * 3600 - self.episode_s)
            start = int(rng.integers(lo, hi + 1))
        return day, Window(start, self.episode_s)


def start_episodes(
    batches: list[tuple[Simulator, list[DayProfile], list[Window], list]], warm_start: str
) -> list[np.ndarray]:
    """Reset each ``(sim, days, windows, rngs)`` and return their first observations ((B, F) each).

    With ``warm_start='pi'`` each day runs from 00:00 under the PI up to its window start (shared by the
    members of one simulator), so the episode's first state is the one the PI left; ``sim.done`` comes
    after the window's ``length_s`` steps either way. The simulators' mornings are stepped together, one
    PI call for all of them per second (the PI is vectorised; its cost is per call, not per row).
    """
    if warm_start == "none":
        return [sim.reset(days, windows, rngs) for sim, days, windows, rngs in batches]
    starts = [windows[0].start_s for _, _, windows, _ in batches]
    obs = []
    for (sim, days, windows, rngs), start in zip(batches, starts, strict=True):
        if any(w.start_s != start for w in windows):
            raise ValueError("warm_start='pi': the members of one simulator must share the window start")
        obs.append(sim.reset(days, [Window(0, start + w.length_s) for w in windows], rngs))
    rows = np.cumsum([0] + [len(o) for o in obs])
    pi = PIController()
    pi.reset(int(rows[-1]))
    state = np.concatenate(obs)
    for t in range(max(starts)):
        targets = pi.act(state)
        for k, (sim, *_) in enumerate(batches):
            if t < starts[k]:
                sim.step(targets[rows[k] : rows[k + 1]])
                state[rows[k] : rows[k + 1]] = sim.obs
    return [state[rows[k] : rows[k + 1]].copy() for k in range(len(batches))]


class ExportControlEnv(gym.Env):
    """PV export control over a delayed Zigbee link.

    ## Description
    A three-phase site with rooftop PV, a base load with appliance events, and controllable loads
    ("slaves": water heater, EV charger, heat pump) that a master controller commands over Zigbee.
    Each second the agent sets a power target per phase; a dispatcher turns it into slave commands,
    which arrive after a random delay (lognormal, seconds) or are lost, and the slaves follow with
    their own ramps and limits. The goal: export less energy than the PI baseline, with lower peaks,
    without oscillating, unbalancing the phases or importing energy to do it. Physics:
    envs/simulator.py; weather and loads: envs/profiles.py; the site: a YAML file (envs/site.py).

    ## Action Space
    ``Box(-1, 1, (3,), float32)``: per-phase power targets, mapped linearly to
    ``[0, max_power_per_phase_w]`` W by :func:`envs.actions.to_watts`. Non-finite or out-of-range actions
    are clipped (NaN -> 0 W) and counted as safety violations in ``info``.

    ## Observation Space
    ``Box((N_FEATURES,), float32)``: the state vector of envs/state_spec.py (index, name, unit, bounds in
    ``FEATURES``): per-phase export and PV meter readings (W, held when missing), their totals, meter
    age (s), 10 s / 60 s export means, 1 s / 5 s export deltas and the 5 s PV delta (W), the previous
    targets, acknowledged commands and available power per phase (W), setpoint and export error (W),
    phase imbalance (W), sin/cos of the solar time and of the day of year, clear-sky irradiance (now, next
    hour, rest of the day) and per phase how long power has been available and the energy sent since.

    ## Rewards
    See envs/reward.py: ``-(w_export * net export kW + w_import * controlled import kW
    + w_change * command changes + w_imbalance * phase std kW)`` per second.

    ## Starting State
    A day is drawn from the scenario (weather, appliance events, hot water, EV session), then a window
    of ``episode_s`` seconds in it; slaves start off, the water tank near its configured fill, or, with
    ``warm_start='pi'``, as the PI left them after controlling the day up to the window.

    ## Episode End
    Never terminates; truncates at the end of the window (``episode_s`` steps).

    ## Arguments
    ``config``: an :class:`ExportEnvConfig` or its dict form (RLlib's ``env_config``).
    ``render_mode``: unused (plots come from ``gridrl simulate``).
    ``physics_site``: simulate the slaves of this site instead (the oracle's relaxed site); days, weather
    and loads are still drawn from ``config.site``, so every controller sees the same days.

    ## Version History
    * v0: initial release.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: ExportEnvConfig | dict[str, Any] | None = None,
        render_mode: str | None = None,
        physics_site: Site | None = None,
    ):
        self.config = config if isinstance(config, ExportEnvConfig) else ExportEnvConfig.from_dict(config)
        if self.config.decision_s != 1 or self.config.site_features or self.config.reward_baseline != "none":
            raise ValueError(
                f"decision_s: {self.config.decision_s}, site_features: {self.config.site_features}, "
                f"reward_baseline: {self.config.reward_baseline!r}: a supervising agent (decision_s > 1), "
                "site features and the PI's baseline run in the vector env only "
                "(ExportControlVectorEnv; RLlib: env_runners.gym_env_vectorize_mode: vector_entry_point)"
            )
        self.site = self.config.load_site()
        self.max_power_w = self.site.control.max_power_per_phase_w
        self.observation_space = gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, (N_FEATURES,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (N_ACTIONS,), np.float32)
        self.sim = Simulator(
            physics_site or self.site, self.config.reward.as_array(), self.config.perfect_link,
            self.config.record_events,
        )
        self._targets = np.zeros((1, N_ACTIONS))
        self.day: DayProfile | None = None
        self.window: Window | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.config.site_draws:
            self.site = self.config.draw_site(self.np_random)
            self.sim = Simulator(self.site, self.config.reward.as_array(), self.config.perfect_link,
                                 self.config.record_events)  # fmt: skip
        self.day, self.window = self.config.draw_episode(self.np_random, self.site)
        (obs,) = start_episodes([(self.sim, [self.day], [self.window], [self.np_random])], self.config.warm_start)
        info = {"scenario": self.day.scenario, "day_of_year": self.day.day_of_year, "start_s": self.window.start_s}
        return obs[0].astype(np.float32), info

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (N_ACTIONS,):
            a, violation = np.full(N_ACTIONS, -1.0), True
        else:  # NaN fails both comparisons
            violation = not (a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6)
        self._targets[0] = to_watts(a, self.max_power_w)
        self.sim.step(self._targets)
        out = self.sim.out[0]
        info = {
            "export_w": out[O_EXPORT],
            "controlled_import_w": out[O_IMPORT_CTRL],
            "command_changes": out[O_CHANGES],
            "imbalance_w": out[O_IMBALANCE],
            "safety_violation": violation,
        }
        return self.sim.obs[0].astype(np.float32), float(out[O_REWARD]), False, self.sim.done, info


class ExportControlVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` site-days stepped together by one batched kernel (same site, independent seeds).

    All members share the window length, so they end together and are reset together (autoreset on the
    step after the end, gymnasium's NEXT_STEP mode). Observation, action and reward as in
    :class:`ExportControlEnv`. Seeding follows gymnasium's vector envs: ``reset(seed=s)`` gives member
    ``i`` the draws of an :class:`ExportControlEnv` reset with ``seed=s + i``, so a vectorised run and
    ``num_envs`` single envs see the same days and the same transitions (tests/test_vector_runner.py).
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, config: ExportEnvConfig | dict[str, Any] | None = None):
        self.config = config if isinstance(config, ExportEnvConfig) else ExportEnvConfig.from_dict(config)
        self.num_envs = num_envs
        self.site = self.config.load_site()
        self.max_power_w = self.site.control.max_power_per_phase_w
        n_site = len(SITE_FEATURE_NAMES) if self.config.site_features else 0
        self.single_observation_space = gym.spaces.Box(
            np.concatenate([FEATURE_LOW, np.zeros(n_site)]).astype(np.float32),
            np.concatenate([FEATURE_HIGH, np.full(n_site, 10.0)]).astype(np.float32),
            (N_FEATURES + n_site,), np.float32,
        )  # fmt: skip
        n_actions = N_ACTIONS if self.config.decision_s == 1 else 1  # targets, or the PI's preference
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (n_actions,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.sim = Simulator(self.site, self.config.reward.as_array(), self.config.perfect_link, False)
        # members in contiguous groups, one simulator (one site) per group: one group unless sites are drawn
        n_groups = min(self.config.site_draws, num_envs) if self.config.site_draws else 1
        chunks = np.array_split(np.arange(num_envs), n_groups)
        self._groups = [slice(int(a[0]), int(a[-1]) + 1) for a in chunks]
        self._sims = [self.sim] * n_groups
        self._twins: list[Simulator] = []  # reward_baseline 'pi': each group's PI-run twin
        self._twin_obs = np.zeros((num_envs, N_FEATURES), np.float32)
        self._rngs: list[np.random.Generator] = []
        self._needs_reset = False
        self._obs = np.zeros((num_envs, N_FEATURES), np.float32)
        self._rewards = np.zeros(num_envs)
        self._scale = np.ones(num_envs)
        self._continuous_w = np.tile(continuous_power(self.site), (num_envs, 1))
        self._gate_w = np.full(num_envs, gated_w(self.site, self.config.preference_gate))
        self._site_features = np.tile(site_features(self.site), (num_envs, 1))[:, :n_site]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None or not self._rngs:  # member i draws as ExportControlEnv reset with seed + i
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        batches = []
        for g, members in enumerate(self._groups):
            rngs = self._rngs[members]
            if self.config.site_draws:  # the group's site, drawn from its first member's generator
                site = self.config.draw_site(rngs[0])
                weights = self.config.reward.as_array()
                self._sims[g] = Simulator(site, weights, self.config.perfect_link, False)
            sim = self._sims[g]
            self._continuous_w[members] = continuous_power(sim.site)
            self._gate_w[members] = gated_w(sim.site, self.config.preference_gate)
            self._site_features[members] = site_features(sim.site)[: self._site_features.shape[1]]
            drawn = [self.config.draw_episode(rng, sim.site) for rng in rngs]
            windows = [w for _, w in drawn]
            if self.config.warm_start != "none":  # the group shares its first member's window start
                windows = [Window(windows[0].start_s, w.length_s) for w in windows]
            batches.append((sim, [d for d, _ in drawn], windows, rngs))
        if self.config.reward_baseline == "pi":  # twins: the same days, generator copies, the PI at the helm
            weights = self.config.reward.as_array()
            self._twins = [Simulator(sim.site, weights, self.config.perfect_link, False) for sim, *_ in batches]
            batches += [(twin, days, windows, [copy.deepcopy(r) for r in rngs])
                        for twin, (_, days, windows, rngs) in zip(self._twins, batches, strict=True)]  # fmt: skip
        firsts = start_episodes(batches, self.config.warm_start)
        for members, obs in zip(self._groups, firsts, strict=False):
            self._obs[members] = obs
        for members, obs in zip(self._groups, firsts[len(self._groups) :], strict=False):
            self._twin_obs[members] = obs
        self._scale = np.ones(self.num_envs)
        if self.config.reward_floor_kwh is not None:
            floor = self.config.reward_floor_kwh
            for sim, members in zip(self._sims, self._groups, strict=True):
                surplus_kwh = np.clip(sim.window_surplus_w(), 0.0, None).sum(-1) / 3.6e6
                self._scale[members] = floor / (surplus_kwh + floor)
        self._needs_reset = False
        return self._observation(), {}

    def site_of(self, member: int) -> Site:
        """The site member ``member`` lives on this episode (its group's draw with ``site_draws``)."""
        for sim, members in zip(self._sims, self._groups, strict=True):
            if members.start <= member < members.stop:
                return sim.site
        raise IndexError(f"member {member}: the env has {self.num_envs}")

    def step(self, actions):
        if self._needs_reset:
            obs, info = self.reset()
            zeros = np.zeros(self.num_envs)
            return obs, zeros, zeros.astype(bool), zeros.astype(bool), info
        if self.config.decision_s == 1:
            self._step_all(to_watts(actions, self.max_power_w))
            self._rewards *= self._scale
        else:  # the PI sets the targets every second with the agent's preference (decision_s)
            preference = np.clip(np.nan_to_num(np.asarray(actions, np.float64)[:, 0]), -1.0, 1.0)
            total = np.zeros(self.num_envs)
            for _ in range(self.config.decision_s):
                targets = preference_targets(self._obs, preference, self._continuous_w, gate_w=self._gate_w)
                self._step_all(targets)
                total += self._rewards
            self._rewards = total * (self._scale / self.config.decision_s)
        done = self._sims[0].done
        self._needs_reset = done
        truncated = np.full(self.num_envs, done)
        return self._observation(), self._rewards.copy(), np.zeros(self.num_envs, bool), truncated, {}

    def _observation(self) -> np.ndarray:
        """The members' state vectors, each followed by its site's features with ``site_features``."""
        if self._site_features.shape[1] == 0:
            return self._obs.copy()
        return np.concatenate([self._obs, self._site_features], axis=1)

    def _step_all(self, targets: np.ndarray) -> None:
        """One second of every member: ``targets`` (num_envs, 3) W; rewards as the simulator wrote them, less
        their PI-run twins' with ``reward_baseline: pi``."""
        for sim, members in zip(self._sims, self._groups, strict=True):
            sim.step(targets[members])  # a slice: a view, no copy
            self._obs[members] = sim.obs
            self._rewards[members] = sim.out[:, O_REWARD]
        if self._twins:
            pi_targets = preference_targets(self._twin_obs, np.zeros(self.num_envs), self._continuous_w)
            for twin, members in zip(self._twins, self._groups, strict=True):
                twin.step(pi_targets[members])
                self._twin_obs[members] = twin.obs
                self._rewards[members] -= twin.out[:, O_REWARD]


def register_envs() -> None:
    """Register the gymnasium ids (idempotent). Bump the version when dynamics or reward change."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point="envs.export_env:ExportControlEnv", max_episode_steps=DAY_S)
    if VECTOR_ENV_ID not in gym.registry:
        gym.register(VECTOR_ENV_ID, vector_entry_point="envs.export_env:ExportControlVectorEnv")
