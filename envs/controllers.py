"""Baseline controllers of the export domain: PI, the PI with bounded exploration (dithered, for logs),
zero (no control), random; the oracle is envs/oracle.py.
A trained policy becomes a controller through :class:`PolicyController`.

A controller maps a batch of state vectors (B, F; F = envs.state_spec.N_FEATURES) to per-phase targets
(B, 3) in W. It reads only the state vector (envs/state_spec.py), so the same code runs in the simulator,
as the safety wrapper's fallback and on the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from envs.actions import to_watts
from envs.dispatch import allocate_to_phases, start_power_w
from envs.state_spec import FEAT

_EXPORT_L = [FEAT[f"export_w_l{p}"] for p in (1, 2, 3)]
_ACKED_L = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
_AVAIL_L = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]
_TARGET_L = [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]


class Controller(Protocol):
    """What every export-domain controller offers."""

    name: str

    def reset(self, batch: int = 1) -> None:
        """Forget internal state; ``batch`` episodes follow."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Per-phase targets (B, 3) in W for state vectors ``obs`` (B, F)."""


@dataclass(frozen=True)
class PIConfig:
    """Gains of the PI export controller (velocity form)."""

    kp: float = 0.3
    """Proportional gain on the change of export error (W per W)."""
    ki: float = 0.25
    """Integral gain (W per W per second). Tuned on the default site for its ~2 s median link delay
    plus device ramps (``gridrl simulate`` over the five scenarios): higher gains cut export further
    but pass 10 command changes per minute; lower ones leave cloud-edge spikes uncorrected longer."""


class PIController:
    """PI on the site's net export against its setpoint, with anti-windup and output limits.

    Velocity form: ``u += kp * (e - e_prev) + ki * e`` with ``e = export_w - setpoint_w``, then ``u`` is
    clamped to [0, available controllable power]. Clamping the state itself is the anti-windup: the
    integrator never runs past what the slaves can take. ``u`` is spread over the phases by
    :func:`envs.dispatch.allocate_to_phases`, each phase first absorbing its own surplus (estimated as its
    export plus its acknowledged controlled load), which keeps the phases balanced.
    """

    name = "pi"

    def __init__(self, config: PIConfig | None = None):
        self.config = config or PIConfig()
        self.reset()

    def reset(self, batch: int = 1) -> None:
        self.u = np.zeros(batch)
        self.e_prev: np.ndarray | None = None

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.atleast_2d(obs)
        if self.u.shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        e = obs[:, FEAT["export_error_w"]].astype(np.float64)
        de = e - self.e_prev if self.e_prev is not None else np.zeros_like(e)
        self.e_prev = e
        available = obs[:, _AVAIL_L].astype(np.float64)
        self.u = np.clip(self.u + self.config.kp * de + self.config.ki * e, 0.0, available.sum(-1))
        return self.spread(self.u, obs, available)

    def spread(self, u: np.ndarray, obs: np.ndarray, available: np.ndarray) -> np.ndarray:
        """The total ``u`` (B,) over the phases: each phase its own surplus first (the class docstring)."""
        return allocate_to_phases(u, obs[:, _EXPORT_L] + obs[:, _ACKED_L], available)

    def state(self) -> np.ndarray:
        """The integrator (total output, W) per batch member, for the PI-state log."""
        return self.u.copy()


def pi_total_from_state(obs: np.ndarray, config: PIConfig | None = None) -> np.ndarray:
    """The PI's next total (B,) in W from raw state vectors alone, clamped to [0, available]: the previous
    targets stand in for its integrator and the 1 s export delta for ``e - e_prev`` (the velocity form of
    :class:`PIController`, statelessly; rllib_configs/pi_residual.py ``pi_total`` is its torch port)."""
    cfg = config or PIConfig()
    obs = np.atleast_2d(obs).astype(np.float64)
    u = obs[:, _TARGET_L].sum(-1) + cfg.kp * obs[:, FEAT["export_w_delta_1s"]]
    u = u + cfg.ki * obs[:, FEAT["export_error_w"]]
    return np.minimum(np.clip(u, 0.0, None), np.clip(obs[:, _AVAIL_L], 0.0, None).sum(-1))


def preference_spread(
    u: np.ndarray, obs: np.ndarray, available: np.ndarray, continuous_w: np.ndarray, preference: np.ndarray,
    gate_w: Any = np.inf,
) -> np.ndarray:
    """A total ``u`` (B,) over the phases with a dispatch ``preference`` (B,) in [-1, 1] for the phases'
    continuously modulating devices (``continuous_w``, (3,) or (B, 3): per phase, the water heaters' power).
    Each phase's first-pass claim (:func:`envs.dispatch.allocate_to_phases`) moves from its own surplus,
    which is the PI's spread at 0, toward its available continuous power at +1 (those devices first: the
    day planner's rule for low or broken surplus, which a water heater follows exactly where a heat pump
    or an EV at 6 A imports on the dips), or away from it toward -1 (the on/off and stepped devices first:
    on a clear day they store the morning's steady surplus and the water heater keeps its headroom for
    noon). The rest of the total goes by headroom. A positive preference holds only while ``u`` is under
    ``gate_w`` (W, scalar or (B,): :func:`gated_w`); at or above it the spread is the PI's. rllib_configs/
    pi_residual.py ``preference_spread`` is its torch port."""
    avail = np.clip(available, 0.0, None)
    own = np.minimum(np.clip(obs[:, _EXPORT_L] + obs[:, _ACKED_L], 0.0, None), avail)
    cont = np.minimum(avail, continuous_w)
    pref = np.asarray(preference, dtype=np.float64)
    pref = np.where((pref > 0.0) & (np.asarray(u, np.float64) >= gate_w), 0.0, pref)
    claim = own + pref[:, None] * (cont - own)
    return allocate_to_phases(u, np.minimum(np.clip(claim, 0.0, None), avail), avail)


def preference_targets(
    obs: np.ndarray, preference: np.ndarray, continuous_w: np.ndarray, config: PIConfig | None = None,
    gate_w: Any = np.inf,
) -> np.ndarray:
    """Per-phase targets (B, 3) in W from raw state vectors alone: the PI's total
    (:func:`pi_total_from_state`) spread by :func:`preference_spread` (what a supervising agent's env runs
    every second, envs/export_env.py ``decision_s``)."""
    obs = np.atleast_2d(obs).astype(np.float64)
    u = pi_total_from_state(obs, config)
    return preference_spread(u, obs, obs[:, _AVAIL_L], continuous_w, preference, gate_w)


def gated_w(site, gate: float) -> float:
    """The PI total (W) at and above which :func:`preference_spread` drops a positive preference: ``gate``
    times the smallest target that starts one of the ``site``'s on/off or stepped devices
    (envs/dispatch.py ``start_power_w``); inf with ``gate`` 0 (no gate).

    Why: "the water heaters first" puts the surplus of all three phases into a one-phase water heater, whose
    phase then imports what the others export. While the total is too small to start a heat pump or an EV,
    that is the only way to store it (those devices would import on the dips); once it can start one, the
    PI's own spread lets that device run on its phase's surplus and its neighbours', which keeps the phases
    closer (README, "the preference's gate")."""
    return gate_threshold_w(start_power_w(site), gate)


def gate_threshold_w(start_w: float, gate: float) -> float:
    """:func:`gated_w` from the start power itself (what a deployed module carries): ``gate x start_w``, inf
    with ``gate`` 0."""
    return float(gate * start_w) if gate > 0 else float(np.inf)


ROLE_KINDS = ("water_heater", "ev_charger", "heat_pump")
"""The kinds of controllable device, in the order :func:`phase_roles` ranks a phase's role by."""


def phase_power(site, kinds: tuple[str, ...] = ROLE_KINDS) -> np.ndarray:
    """(3, len(kinds)): per phase, the summed maximum power of a :class:`~envs.site.Site`'s devices of each
    kind, W: the layout a site's master is configured with."""
    power = np.zeros((3, len(kinds)))
    for sl in site.slaves:
        if sl.kind in kinds:
            power[sl.phase - 1, kinds.index(sl.kind)] += sl.max_power_w
    return power


def continuous_power(site) -> np.ndarray:
    """Per phase (3,), the power of a :class:`~envs.site.Site`'s continuously modulating devices (its
    water heaters), W."""
    return phase_power(site, ("water_heater",))[:, 0]


def phase_roles(site) -> tuple[int, int, int]:
    """A :class:`~envs.site.Site`'s phases (0-based) ranked by their devices' role: the phase with the most
    water-heater power first, then the most EV charging power, then the most heat-pump power (ties: the
    lower phase first). The default site (water heater on L1, EV on L2, heat pump on L3) gives (0, 1, 2); a
    site with its water heater on L3, its EV on L2 and its heat pump on L1 gives (2, 1, 0)."""
    power = phase_power(site)
    return tuple(sorted(range(3), key=lambda p: (*(-power[p]), p)))  # type: ignore[return-value]


def phase_map(trained_on, site) -> tuple[int, int, int]:
    """For each phase of the site a policy was trained on (``trained_on``), the phase of ``site`` whose
    devices play the same role (:func:`phase_roles` of both): the order in which a policy that reads
    per-phase state features should read ``site``'s (envs/state_spec.py ``phase_permuted_columns``)."""
    order = [0, 1, 2]
    for t, d in zip(phase_roles(trained_on), phase_roles(site), strict=True):
        order[t] = d
    return tuple(order)  # type: ignore[return-value]


class ContinuousFirstPI(PIController):
    """The PI with the day planner's dispatch rule (tests/benchmarks/bench_plan.py): its total goes first to
    the phases' continuously modulating devices (water heaters), the rest by headroom
    (:func:`preference_spread` at preference 1; until commit 2fa7886 the rest went by each phase's own
    surplus first, which tests/benchmarks/bench_plan.py's README figures were measured with). A water heater
    follows a low or broken surplus exactly, where a heat pump (on/off) or an EV (6 A minimum) imports on
    the dips and leaves the surplus to export once off. Causal, no foresight; it knows the site's layout
    (``continuous_w``: per phase, the continuous devices' power, as the site's master is configured).
    A comparator for the benchmarks, not a shipped controller. ``preference`` other than 1 holds another
    dispatch preference all day (tests/benchmarks/bench_preferences.py ``--constant``)."""

    name = "pi_continuous_first"

    def __init__(
        self, continuous_w: tuple[float, float, float], config: PIConfig | None = None, preference: float = 1.0,
        gate_w: float = np.inf,
    ):
        super().__init__(config)
        self.continuous_w = np.asarray(continuous_w, dtype=np.float64)
        self.preference = float(preference)
        self.gate_w = float(gate_w)

    @classmethod
    def for_site(cls, site) -> ContinuousFirstPI:
        """From a :class:`~envs.site.Site`: its water heaters' power per phase."""
        return cls(tuple(continuous_power(site)))

    def spread(self, u: np.ndarray, obs: np.ndarray, available: np.ndarray) -> np.ndarray:
        pref = np.full(len(u), self.preference)
        return preference_spread(u, obs, available, self.continuous_w, pref, self.gate_w)


@dataclass(frozen=True)
class DitherConfig:
    """Bounds of :class:`DitheredPIController`'s exploration (``gridrl data generate --controller
    dithered_pi``). :meth:`bound` states them in one sentence, for the logs' and the dataset's manifest."""

    gain_low: float = 0.7
    """Lowest factor on the PI's nominal kp and ki (each drawn on its own, once per gain period)."""
    gain_high: float = 1.3
    """Highest factor on the PI's nominal kp and ki."""
    gain_period_s: int = 3600
    """Control cycles (seconds) between two draws of the gain factors: gains vary per hour."""
    residual_w: float = 300.0
    """Largest residual added to the PI's per-phase target (W); drawn uniformly in +-residual_w."""
    hold_s: tuple[int, int] = (5, 30)
    """A residual is held for a whole number of seconds drawn uniformly in this range (both ends in),
    so the logs show what a changed target does after the link's delay and the devices' ramps."""

    def __post_init__(self) -> None:
        if not 0 < self.gain_low <= 1 <= self.gain_high <= 3:
            raise ValueError(
                f"gain_low: need 0 < gain_low <= 1 <= gain_high <= 3, got {self.gain_low}, {self.gain_high}"
            )
        if self.gain_period_s < 1:
            raise ValueError(f"gain_period_s: must be >= 1, got {self.gain_period_s}")
        if not 0 <= self.residual_w <= 2000:
            raise ValueError(f"residual_w: must be within [0, 2000] W, got {self.residual_w}")
        if len(self.hold_s) != 2 or not 1 <= self.hold_s[0] <= self.hold_s[1] <= 3600:
            raise ValueError(f"hold_s: need 1 <= low <= high <= 3600 s, got {list(self.hold_s)}")

    def bound(self) -> str:
        """The exploration's bound, in the words the --help, the manifests and the README use."""
        return (
            f"kp and ki are each within [{self.gain_low:g}, {self.gain_high:g}] x nominal, redrawn every "
            f"{self.gain_period_s} s; the target never differs from that PI's target by more than "
            f"{self.residual_w:g} W per phase (a residual held {self.hold_s[0]}-{self.hold_s[1]} s, only "
            "while the PI commands power), and stays within [0, the phase's available power]"
        )


class DitheredPIController:
    """The PI with bounded exploration, for logs that hold more than one action per state.

    A site owner can accept it because it stays close to the controller they run (:class:`DitherConfig`
    holds the numbers; :meth:`DitherConfig.bound` states them):

    * **gains**: every ``gain_period_s`` control cycles, kp and ki are set to their nominal values times
      factors drawn uniformly in ``[gain_low, gain_high]``, one for each;
    * **residual**: a per-phase offset drawn uniformly in ``+-residual_w`` W, held for a number of seconds
      drawn in ``hold_s``, is added to that PI's per-phase targets, and the sum is clipped to
      ``[0, available_w_l]``. So ``|target_l - pi_target_l| <= residual_w`` at every second, where
      ``pi_target_l`` is the target of the PI with this period's gains (:attr:`pi_target`). The residual
      applies only while the PI's own output is above 0 W: at night, or whenever the PI commands nothing,
      the target is the PI's (no import is provoked where there is nothing to control).

    The PI's integrator runs on the readings alone (velocity form), so the residual does not wind it up:
    replaying the same readings through a :class:`PIController` with the same gains gives
    :attr:`pi_target` exactly. Every random draw comes from the controller's own generator, seeded by
    ``seed`` at :meth:`reset`: the same seed gives the same gains and residuals.
    """

    name = "dithered_pi"

    def __init__(
        self, dither: DitherConfig | None = None, pi: PIConfig | None = None, seed: int | None = None
    ):
        self.dither = dither or DitherConfig()
        self.nominal = pi or PIConfig()
        self.seed = seed
        self.pi = PIController(self.nominal)
        self.reset()

    def reset(self, batch: int = 1) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.pi.reset(batch)
        self.steps = 0
        self.residual = np.zeros((batch, 3))
        self.hold_left = np.zeros(batch, dtype=np.int64)
        self.gains: list[tuple[float, float]] = []
        """(kp factor, ki factor) of every gain period so far, in order."""
        self.pi_target = np.zeros((batch, 3))
        """The last targets of the PI with this period's gains, before the residual (W)."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.atleast_2d(obs)
        if self.residual.shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        d = self.dither
        if self.steps % d.gain_period_s == 0:
            g = self.rng.uniform(d.gain_low, d.gain_high, 2)
            self.gains.append((float(g[0]), float(g[1])))
            self.pi.config = PIConfig(kp=self.nominal.kp * g[0], ki=self.nominal.ki * g[1])
        self.steps += 1
        base = self.pi.act(obs)
        new = self.hold_left <= 0
        if new.any():
            n = int(new.sum())
            self.residual[new] = self.rng.uniform(-d.residual_w, d.residual_w, (n, 3))
            self.hold_left[new] = self.rng.integers(d.hold_s[0], d.hold_s[1] + 1, n)
        self.hold_left -= 1
        active = (self.pi.u > 0)[:, None]
        ceiling = np.maximum(np.clip(obs[:, _AVAIL_L], 0.0, None), base)
        self.pi_target = base
        return np.clip(base + np.where(active, self.residual, 0.0), 0.0, ceiling)

    def state(self) -> np.ndarray:
        """The PI's integrator (W) per batch member, for the PI-state log."""
        return self.pi.state()


@dataclass(frozen=True)
class PreferenceDitherConfig:
    """Bounds of :class:`DitheredPreferenceController`'s exploration (``gridrl data generate --controller
    dithered_preference``): the logs an offline supervisor learns from
    (rllib_configs/offline_supervisor.py)."""

    period_s: int = 600
    """Control cycles (seconds) between two draws of the preference: the supervisor's decision period."""
    choices: tuple[float, ...] = (-1.0, 0.0, 1.0)
    """The preferences drawn from, uniformly (each in [-1, 1]; 0 is the PI's own spread)."""
    gate: float = 2.0
    """The preference's gate (:func:`gated_w`): a positive preference holds only while the PI's total is under
    ``gate`` x the power that starts one of the site's heat pumps or EVs; 0: always."""

    def __post_init__(self) -> None:
        if self.period_s < 1:
            raise ValueError(f"period_s: must be >= 1, got {self.period_s}")
        if not self.choices or any(not -1.0 <= c <= 1.0 for c in self.choices):
            raise ValueError(f"choices: preferences within [-1, 1], got {list(self.choices)}")
        if self.gate < 0:
            raise ValueError(f"gate: must be >= 0 (0: no gate), got {self.gate}")

    def bound(self) -> str:
        """The exploration's bound, in the words the --help, the manifests and the README use."""
        return (
            "every second the total target is the PI's own (its velocity form over the logged state); only "
            "its split over the phases varies, by a dispatch preference drawn from "
            f"{{{', '.join(f'{c:g}' for c in self.choices)}}} every {self.period_s} s (0 = the PI's "
            f"spread; positive ones gated at {self.gate:g} x the site's start power), and every phase stays "
            "within [0, its available power]"
        )


class DitheredPreferenceController:
    """The PI as a supervisor runs it, with its dispatch preference drawn at random: logs in which the same
    state is seen under several preferences, which an offline supervisor needs to compare them.

    Every second the total is :func:`pi_total_from_state` (the PI's velocity form with the previous targets
    as its integrator, as envs/export_env.py runs it for a supervising agent), spread by
    :func:`preference_spread` with the current preference; every ``period_s`` seconds a new preference is
    drawn from ``choices`` by the controller's own generator, seeded by ``seed`` at :meth:`reset`. What the
    site absorbs in total is the PI's; only which phase's devices take it changes
    (:meth:`PreferenceDitherConfig.bound`). :attr:`preferences` lists the drawn ones, in order.
    """

    name = "dithered_preference"

    def __init__(self, site, dither: PreferenceDitherConfig | None = None, seed: int | None = None):
        self.dither = dither or PreferenceDitherConfig()
        self.config = PIConfig()
        self.continuous_w = continuous_power(site)
        self.gate_w = gated_w(site, self.dither.gate)
        self.seed = seed
        self.reset()

    def reset(self, batch: int = 1) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.steps = 0
        self.preference = np.zeros(batch)
        self.preferences: list[float] = []
        self.u = np.zeros(batch)

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.atleast_2d(obs).astype(np.float64)
        if self.u.shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        if self.steps % self.dither.period_s == 0:
            self.preference = self.rng.choice(np.asarray(self.dither.choices, np.float64), obs.shape[0])
            self.preferences.append(float(self.preference[0]))
        self.steps += 1
        self.u = pi_total_from_state(obs, self.config)
        avail = obs[:, _AVAIL_L]
        return preference_spread(self.u, obs, avail, self.continuous_w, self.preference, self.gate_w)

    def state(self) -> np.ndarray:
        """The PI's total (W) per batch member, for the PI-state log."""
        return self.u.copy()


def pi_target_from_state(obs: np.ndarray, config: PIConfig | None = None) -> np.ndarray:
    """What the PI would command next from the state vector alone (B, 3) W: one step of
    :class:`PIController` whose integrator is the total of the state's previous targets and whose
    previous error is ``export_error_w - export_w_delta_1s``. On the PI's own logs it reproduces the
    logged actions; on other logs, ``action - pi_target_from_state(obs)`` is how far the logged action
    departs from the PI in that state (offline_data/coverage.py)."""
    cfg = config or PIConfig()
    obs = np.atleast_2d(obs).astype(np.float64)
    e = obs[:, FEAT["export_error_w"]]
    de = obs[:, FEAT["export_w_delta_1s"]]
    prev = obs[:, [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]].sum(-1)
    available = obs[:, _AVAIL_L]
    u = np.clip(prev + cfg.kp * de + cfg.ki * e, 0.0, np.clip(available, 0.0, None).sum(-1))
    return allocate_to_phases(u, obs[:, _EXPORT_L] + obs[:, _ACKED_L], available)


class ZeroController:
    """No control: every target is 0 W."""

    name = "zero"

    def reset(self, batch: int = 1) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros((np.atleast_2d(obs).shape[0], 3))


class RandomController:
    """Uniform random targets in [0, max_power_per_phase_w], from its own seeded generator."""

    name = "random"

    def __init__(self, max_power_per_phase_w: float, seed: int | None = None):
        self.max_w = max_power_per_phase_w
        self.seed = seed
        self.reset()

    def reset(self, batch: int = 1) -> None:
        self.rng = np.random.default_rng(self.seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(0.0, self.max_w, (np.atleast_2d(obs).shape[0], 3))


@dataclass(frozen=True)
class RBCConfig:
    """Thresholds of the rule-based controller."""

    margin_w: float = 100.0
    """Surplus left unabsorbed on each phase (W): the rule errs toward a little export, not import."""
    hysteresis_w: float = 200.0
    """A phase's target moves only when the rule's value differs from the previous target by more than
    this (W): fewer command changes than following every reading."""


class RuleBasedController:
    """Surplus following per phase, with hysteresis: the rule-based baseline (bundle ``controller: rbc``).

    Each phase absorbs its own estimated surplus, never another phase's (so it keeps the phases
    balanced and never spills one phase's PV onto another phase's loads)::

        surplus_l = export_w_l + acked_w_l - setpoint_w / 3
        rule_l    = clip(surplus_l - margin_w, 0, available_w_l)
        target_l  = rule_l if |rule_l - target_w_l| > hysteresis_w else target_w_l

    ``target_w_l`` is the previous target, read from the state vector: the controller keeps no state.
    """

    name = "rbc"

    def __init__(self, config: RBCConfig | None = None):
        self.config = config or RBCConfig()

    def reset(self, batch: int = 1) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.atleast_2d(obs).astype(np.float64)
        surplus = obs[:, _EXPORT_L] + obs[:, _ACKED_L] - obs[:, [FEAT["setpoint_w"]]] / 3.0
        rule = np.clip(surplus - self.config.margin_w, 0.0, np.clip(obs[:, _AVAIL_L], 0.0, None))
        prev = obs[:, [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]]
        return np.where(np.abs(rule - prev) > self.config.hysteresis_w, rule, prev)


class UnitPolicy(Protocol):
    """A policy acting in the networks' units: e.g. rllib_configs/policy.py's ``Policy`` of a checkpoint."""

    def act_unit(self, obs: np.ndarray) -> np.ndarray:
        """Actions in [-1, 1] (B, 3) for raw state vectors (B, F)."""


class PolicyController:
    """A policy in [-1, 1] (:class:`UnitPolicy`) as an export-domain controller (targets in W)."""

    name = "policy"

    def __init__(self, policy: UnitPolicy, max_power_per_phase_w: float):
        self.policy = policy
        self.max_w = max_power_per_phase_w

    def reset(self, batch: int = 1) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return to_watts(self.policy.act_unit(obs), self.max_w)
