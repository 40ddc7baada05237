"""The safety wrapper: the one gate between any controller and the slaves (Ray Serve and the edge).

:meth:`SafetyWrapper.decide` takes a raw state vector (envs/state_spec.py) and returns a
:class:`Decision`: the per-phase targets to send (W), where they came from and which checks fired. It
calls the wrapped policy itself, so it can time it, catch it and replace it. Numpy only.

Whatever it is given (NaN or inf in the state or in the policy's output, a wrong shape, a policy that
raises or is slower than its deadline), the targets it returns are finite and within
``[0, max_power_per_phase_w]``: the last step of every path is a clip into the bounds.

Sources (``Decision.source``):

* ``policy``: the policy's action, possibly limited by the soft checks below;
* ``fallback``: the PI's action (envs/controllers.py), during a timed fallback or when the policy failed
  this step. The PI runs every step, also while the policy acts, and its integrator is set to the total
  actually sent (tracking), so taking over is bumpless;
* ``safe``: the state itself is unusable (wrong shape, non-finite, outside the spec's bounds): neither
  controller can be trusted with it; the previous targets ramp down toward 0 W at the rate limit.

Checks (the names in ``Decision.checks_fired``), in the order they run:

===============  =======================================================================  ============
check            fires when                                                               effect
===============  =======================================================================  ============
state_invalid    state not (F,) or (1, F), non-finite, or outside FEATURE_LOW..HIGH       safe; 24 h
anomaly          ``|z| > anomaly_z`` on a monitored feature for anomaly_persist_s         fallback 24 h
policy_error     the policy raised                                                        fallback 1 h
policy_late      the policy answered after policy_deadline_s: the answer is discarded     PI, one step
policy_deadline  the policy was late deadline_misses times in a row                       fallback 1 h
policy_output    the output is not 3 finite values within [-1, 1] (+ output_tolerance)    fallback 1 h
rate_limit       a phase's target moves more than max_rate_w_per_s * decision_period_s    clipped
phase_imbalance  predicted phase spread above the allowance (:meth:`_limit_imbalance`)    scaled down
no_import        setpoint > 0 and the targets would make the site import (see below)      scaled down
bounds           a target outside [0, max_power_per_phase_w] (only on a fault upstream)   clipped
===============  =======================================================================  ============

``z = (state - mean) / std`` with the statistics the policy was trained on (the bundle's
normalisation). Timed fallbacks: after a safety violation (policy_error, policy_deadline,
policy_output) the PI acts for ``violation_fallback_s`` (1 h), after an anomaly for
``anomaly_fallback_s`` (24 h) counted from the last anomalous second; then the policy is retried.
Timers read ``clock`` (seconds; the edge passes the meter's time, tests pass a fake). The deadline
reads ``timer`` (wall clock): the wrapper cannot pre-empt a running policy (no threads on the edge),
it discards a late answer; a policy that never returns is the process watchdog's business. One late
answer costs one step (the PI's answer goes out): a loaded 2-core host stalled a 50 us PI call for
25-130 ms now and then, which says more about the host than about the policy; ``deadline_misses``
late answers in a row are a violation.

The soft checks (rate, imbalance) bound the *policy*; the fallback PI's output passes only the hard
ones (no_import, bounds): it is the controller the sites ran before, and clipping it with limits meant
for a learned policy would change a validated controller. Predictions use the state: the surplus of
phase l without controlled load is ``s_l = export_w_l + acked_w_l``, the export after the targets
``a`` is estimated as ``s_l - a_l``.

* **no_import** (the seed's "no negative power when the setpoint is above 0"): with
  ``setpoint_w > 0`` the site must export, so controlled load may not pull net export below 0:
  ``sum(a) <= max(0, sum(s))``; targets are scaled down to meet it.
* **phase_imbalance**: the spread (max - min) of the predicted per-phase export may not exceed
  ``max(max_phase_spread_w, spread(s), spread(s - a_pi))``: a policy may not unbalance the phases more
  than the limit, than the site does on its own, or than the PI would. Targets are scaled toward 0 W
  (no controlled load always satisfies it) by the largest factor that meets it.

Defaults were set from measured full days (5 scenarios, default site, ``seed=5``): under the PI, a
10-iteration PPO policy and no control, the monitored meter readings (export and PV per phase) never
held ``|z| > 12.3`` for 10 s (single seconds reached 13.2); z of derived features (deltas, meter age) and
of the time of day (training windows are daylight) go far higher on normal days and are not
monitored by default; ``available_w_l1``/``l3`` and ``setpoint_w`` have degenerate training std.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import numpy as np

from envs.actions import N_ACTIONS, to_unit, to_watts
from envs.config import from_mapping, to_mapping
from envs.controllers import Controller, PIController
from envs.normalization import ObsNormalizer
from envs.state_spec import FEAT, FEATURE_HIGH, FEATURE_LOW, N_FEATURES


def _phases(name: str) -> slice:
    """The state vector's l1..l3 entries of ``name`` as a slice (a view: cheaper than a fancy index)."""
    first = FEAT[f"{name}_l1"]
    assert [FEAT[f"{name}_l{p}"] for p in (1, 2, 3)] == [first, first + 1, first + 2]
    return slice(first, first + 3)


_EXPORT_L, _ACKED_L, _AVAIL_L, _TARGET_L = (
    _phases(n) for n in ("export_w", "acked_w", "available_w", "target_w")
)
_SETPOINT = FEAT["setpoint_w"]
_LOW = FEATURE_LOW.astype(np.float64)
_HIGH = FEATURE_HIGH.astype(np.float64)

SOURCES = ("policy", "fallback", "safe")
VIOLATIONS = ("policy_error", "policy_deadline", "policy_output")
METER_FEATURES = tuple(f"{k}_w_l{p}" for k in ("export", "pv") for p in (1, 2, 3))


class ManifestSection:
    """A bundle manifest's section as a typed dataclass: every domain's safety limits (``safety``)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "safety") -> Self:
        """Typed conversion; unknown keys and bad values raise a ConfigError naming ``source`` and the key."""
        return from_mapping(cls, data, source=source)

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)


@dataclass(frozen=True)
class SafetyLimits(ManifestSection):
    """The limits the wrapper enforces; a bundle's manifest carries them (``safety``)."""

    max_power_per_phase_w: float
    """Action bound: targets lie in [0, this] (W). The site's ``control.max_power_per_phase_w``."""
    max_rate_w_per_s: float | None = 3750.0
    """Largest change of a phase's target per second (W/s); None = no limit. Half the range: a policy
    cannot swing a phase from 0 to full in one second (the PI exceeded it once in 5 measured days)."""
    max_phase_spread_w: float | None = 4600.0
    """Limit on the spread of predicted per-phase export (W); None = no limit. 4.6 kVA is the
    unbalance limit of VDE-AR-N 4105."""
    no_import: bool = True
    """Enforce 'no negative power when the setpoint is above 0' (see the module docstring)."""
    anomaly_z: float | None = 20.0
    """|z| above this on a monitored feature is anomalous; None = no anomaly detector."""
    anomaly_features: tuple[str, ...] = METER_FEATURES
    """Monitored features (names from envs/state_spec.py): the meter readings by default."""
    anomaly_persist_s: float = 10.0
    """An anomaly counts once it has held this long (s of ``clock``); 0 = at once."""
    violation_fallback_s: float = 3600.0
    """Fallback to the PI after a safety violation (s): 1 h."""
    anomaly_fallback_s: float = 86400.0
    """Fallback to the PI after an anomaly or an invalid state (s): 24 h."""
    policy_deadline_s: float = 0.05
    """A policy answer later than this (wall clock, s) is discarded; the PI's goes out instead."""
    deadline_misses: int = 3
    """This many late answers in a row are a safety violation (1 h fallback)."""
    decision_period_s: float = 1.0
    """Seconds between decisions: the rate limit allows max_rate_w_per_s * this per decision."""
    output_tolerance: float = 1e-5
    """How far outside [-1, 1] a policy's output may lie before it is a violation (then clipped)."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.max_power_per_phase_w) and self.max_power_per_phase_w > 0):
            raise ValueError(
                f"max_power_per_phase_w: must be finite and > 0, got {self.max_power_per_phase_w}"
            )
        for name in ("max_rate_w_per_s", "max_phase_spread_w", "anomaly_z"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}: must be > 0 or null, got {v}")
        unknown = [f for f in self.anomaly_features if f not in FEAT]
        if unknown:
            raise ValueError(f"anomaly_features: unknown feature(s) {unknown}")
        for name in ("anomaly_persist_s", "violation_fallback_s", "anomaly_fallback_s", "output_tolerance"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("policy_deadline_s", "decision_period_s", "deadline_misses"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")



def _spread(v: np.ndarray) -> float:
    """max - min of a 3-vector (np.ptp costs several times more on tiny arrays)."""
    a, b, c = float(v[0]), float(v[1]), float(v[2])
    return max(a, b, c) - min(a, b, c)


class UnitPolicy(Protocol):
    """What the wrapper calls: a raw state vector (30,) -> actions (3,) in the networks' [-1, 1]."""

    def __call__(self, state: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Decision:
    """What to send and why."""

    action_w: np.ndarray
    """Per-phase targets (3,), W, finite, within [0, max_power_per_phase_w]."""
    source: str
    """'policy', 'fallback' or 'safe' (see the module docstring)."""
    checks_fired: tuple[str, ...] = ()
    """Names of the checks that fired this step, in the order they ran."""
    fallback_until: float = -np.inf
    """Clock time until which the PI acts (-inf: no timed fallback)."""
    z_max: float = 0.0
    """Largest |z| over the monitored features (NaN for an invalid state)."""
    policy_s: float = 0.0
    """Wall-clock seconds the policy took (0 when it was not called)."""


@dataclass
class Timers:
    """A wrapper's memory of time: its timed fallback, an anomaly's start, late answers in a row."""

    fallback_until: float = -np.inf
    anomaly_since: float | None = None
    late: int = 0
    reasons: list[str] = field(default_factory=list)

    def fall_back(self, now: float, duration_s: float, reason: str) -> None:
        """Fall back until ``now + duration_s`` (never shortening a running fallback), recording why."""
        until = now + duration_s
        if until > self.fallback_until:
            self.fallback_until = until
        self.reasons.append(reason)


def policy_step(
    policy: Callable[[np.ndarray], Any],
    x: np.ndarray,
    n_actions: int,
    limits: Any,
    timers: Timers,
    timer: Callable[[], float],
    fired: list[str],
    now: float,
) -> tuple[np.ndarray | None, float]:
    """One step's policy answer, as every domain's wrapper takes it: ``policy(x)`` timed and caught,
    ``(its action clipped to [-1, 1], seconds)``; or ``(None, seconds)`` where the fallback acts instead:
    during a timed fallback (the policy is not called), or when the answer is refused, with the check that
    fired appended to ``fired`` (policy_error, policy_late, policy_deadline, policy_output: see the module
    docstring); a refusal that is a violation starts a fallback of ``limits.violation_fallback_s``.
    ``limits`` has those fields and ``policy_deadline_s``, ``deadline_misses``, ``output_tolerance``
    (:class:`SafetyLimits`, or another domain's limits: serve/citylearn_safety.py)."""

    def refuse(check: str, elapsed: float) -> tuple[None, float]:
        fired.append(check)
        if check in VIOLATIONS:
            timers.fall_back(now, limits.violation_fallback_s, check)
        return None, elapsed

    if now < timers.fallback_until:
        return None, 0.0
    t0 = timer()
    try:
        out = policy(x)
    except Exception:  # noqa: BLE001 - any failure of the policy is a violation, never a crash
        return refuse("policy_error", float(timer() - t0))
    elapsed = float(timer() - t0)
    if not elapsed <= limits.policy_deadline_s:
        timers.late += 1
        return refuse("policy_deadline" if timers.late >= limits.deadline_misses else "policy_late", elapsed)
    timers.late = 0
    try:
        a = np.asarray(out, dtype=np.float64)
        ok = a.size == n_actions and a.ndim <= 2
    except Exception:  # noqa: BLE001 - an output that is not numbers is a wrong output
        a, ok = np.full(n_actions, np.nan), False
    tol = 1.0 + limits.output_tolerance
    if not ok or not np.all(np.abs(a) <= tol):  # also False for NaN
        return refuse("policy_output", elapsed)
    return np.minimum(np.maximum(a.reshape(n_actions), -1.0), 1.0), elapsed


class FallbackGate:
    """What every domain's safety wrapper does around its own checks: the clock and the :class:`Timers` of its
    timed fallback, the policy's reset, and an invalid state's start of a fallback. A subclass sets
    ``policy`` and ``clock``, calls :meth:`_restart` in its ``reset`` and defines :meth:`_valid_state`."""

    policy: Any
    clock: Callable[[], float]
    timers: Timers

    @property
    def in_fallback(self) -> bool:
        return self.clock() < self.timers.fallback_until

    def _restart(self) -> None:
        """Reset the policy (where it can be) and forget the timers."""
        if hasattr(self.policy, "reset"):
            self.policy.reset()
        self.timers = Timers()

    def _checked_state(self, state: Any, invalid_fallback_s: float) -> tuple[float, np.ndarray | None]:
        """This step's clock and its valid state vector; None for an invalid state, which starts a fallback of
        ``invalid_fallback_s`` (check ``state_invalid``)."""
        now = float(self.clock())
        x = self._valid_state(state)
        if x is None:
            self.timers.fall_back(now, invalid_fallback_s, "state_invalid")
        return now, x

    def _valid_state(self, state: Any) -> np.ndarray | None:
        """``state`` as the domain's valid state vector, or None (the domain's checks)."""
        raise NotImplementedError


class SafetyWrapper(FallbackGate):
    """Wraps a policy: validates the state, calls the policy, checks and limits its action, falls back.

    Args:
        limits: The limits (a bundle's ``safety``).
        normalizer: The training statistics (a bundle's ``normalization``), for the anomaly detector.
        policy: The controller under test, a :class:`UnitPolicy`.
        fallback: The fallback controller (targets in W); default a fresh :class:`PIController`.
        clock: Seconds, for the timed fallbacks (default ``time.monotonic``).
        timer: Seconds, for the policy deadline (default ``time.perf_counter``).
    """

    def __init__(
        self,
        limits: SafetyLimits,
        normalizer: ObsNormalizer,
        policy: UnitPolicy,
        fallback: Controller | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
    ):
        self.limits = limits
        self.max_w = float(limits.max_power_per_phase_w)
        self.mean = np.asarray(normalizer.mean, np.float64)
        self.std = np.asarray(normalizer.std, np.float64)
        self.policy = policy
        self.fallback = fallback if fallback is not None else PIController()
        self.clock = clock
        self.timer = timer
        self._monitored = np.array([FEAT[f] for f in limits.anomaly_features], dtype=np.intp)
        self._step_w = (
            limits.max_rate_w_per_s * limits.decision_period_s
            if limits.max_rate_w_per_s is not None
            else np.inf
        )
        self.reset()

    def reset(self) -> None:
        """Forget the previous action, the timers and the fallback's state (a new episode or a restart)."""
        self.fallback.reset(1)
        self._restart()
        self.last_w: np.ndarray | None = None

    def decide(self, state: Any) -> Decision:
        """The targets to send for ``state`` (raw state vector, (F,) or (1, F)), with their provenance."""
        now, x = self._checked_state(state, self.limits.anomaly_fallback_s)
        if x is None:
            return self._emit(self._ramp_down(), "safe", ["state_invalid"], np.nan, 0.0)
        fired: list[str] = []
        z_max = self._anomaly(x, now, fired)
        pi_w = self._fallback_action(x)
        proposal, policy_s = None, 0.0
        if pi_w is not None:  # the PI failed: the policy is not asked, the step is a safe one
            proposal, policy_s = policy_step(
                self.policy, x, N_ACTIONS, self.limits, self.timers, self.timer, fired, now
            )
        if proposal is None:
            source, action = "fallback", pi_w
        else:
            source, action = "policy", to_watts(proposal, self.max_w)
            action = self._rate_limit(x, action, fired)
            action = self._limit_imbalance(x, action, pi_w, fired)
        if action is None:  # the fallback itself failed: nothing trustworthy this step
            return self._emit(self._ramp_down(), "safe", fired, z_max, policy_s)
        action = self._no_import(x, action, fired)
        if source == "policy":
            self._track(x, action)
        return self._emit(action, source, fired, z_max, policy_s)

    # --- steps of decide

    def _valid_state(self, state: Any) -> np.ndarray | None:
        try:
            x = np.asarray(state, dtype=np.float64)
        except Exception:  # noqa: BLE001 - whatever it is, it is not a state vector
            return None
        if x.shape == (1, N_FEATURES):
            x = x[0]
        if x.shape != (N_FEATURES,):
            return None
        if not (np.all(x >= _LOW) and np.all(x <= _HIGH)):  # also False for NaN
            return None
        return x

    def _anomaly(self, x: np.ndarray, now: float, fired: list[str]) -> float:
        if self.limits.anomaly_z is None or self._monitored.size == 0:
            return 0.0
        z_max = float(
            np.max(np.abs((x[self._monitored] - self.mean[self._monitored]) / self.std[self._monitored]))
        )
        if z_max <= self.limits.anomaly_z:
            self.timers.anomaly_since = None
            return z_max
        if self.timers.anomaly_since is None:
            self.timers.anomaly_since = now
        if now - self.timers.anomaly_since >= self.limits.anomaly_persist_s:
            fired.append("anomaly")
            self._fall_back(now, self.limits.anomaly_fallback_s, "anomaly")
        return z_max

    def _fallback_action(self, x: np.ndarray) -> np.ndarray | None:
        try:
            w = np.asarray(self.fallback.act(x[None, :]), dtype=np.float64).reshape(N_ACTIONS)
        except Exception:  # noqa: BLE001 - the gate must not fall over with its fallback
            return None
        if not np.all(np.isfinite(w)):
            return None
        return to_watts(to_unit(w, self.max_w), self.max_w)  # the env's own path: to_unit, then to_watts

    def _rate_limit(self, x: np.ndarray, action: np.ndarray, fired: list[str]) -> np.ndarray:
        """Around the last targets sent; after a (re)start, around the previous targets in the state."""
        if not np.isfinite(self._step_w):
            return action
        last = (
            self.last_w if self.last_w is not None else np.minimum(np.maximum(x[_TARGET_L], 0.0), self.max_w)
        )
        limited = np.minimum(np.maximum(action, last - self._step_w), last + self._step_w)
        if np.any(np.abs(limited - action) > 1e-9):
            fired.append("rate_limit")
        return limited

    def _limit_imbalance(
        self, x: np.ndarray, action: np.ndarray, pi_w: np.ndarray | None, fired: list[str]
    ) -> np.ndarray:
        """Scale ``action`` toward 0 W until the predicted phase spread is within the allowance.

        With ``s`` the uncontrolled surplus, the spread of ``s - lam * a`` is convex in ``lam`` and
        allowed at ``lam = 0``; each pair of phases (i, j) bounds ``lam`` linearly.
        """
        if self.limits.max_phase_spread_w is None:
            return action
        s = x[_EXPORT_L] + x[_ACKED_L]
        allowed = max(
            self.limits.max_phase_spread_w, _spread(s), _spread(s - pi_w) if pi_w is not None else 0.0
        )
        if _spread(s - action) <= allowed + 1e-6:
            return action
        lam = 1.0
        for i, j in ((0, 1), (0, 2), (1, 2)):
            d, c = s[i] - s[j], action[i] - action[j]
            if c > 0:  # d - lam * c >= -allowed
                lam = min(lam, (d + allowed) / c)
            elif c < 0:  # d - lam * c <= allowed
                lam = min(lam, (allowed - d) / -c)
        fired.append("phase_imbalance")
        return action * min(max(lam, 0.0), 1.0)

    def _no_import(self, x: np.ndarray, action: np.ndarray, fired: list[str]) -> np.ndarray:
        if not self.limits.no_import or not x[_SETPOINT] > 0:
            return action
        room = max(0.0, float(np.sum(x[_EXPORT_L] + x[_ACKED_L])))
        total = float(np.sum(action))
        if total <= room + 1e-6:
            return action
        fired.append("no_import")
        return action * (room / total)

    def _ramp_down(self) -> np.ndarray:
        if self.last_w is None or not np.isfinite(self._step_w):
            return np.zeros(N_ACTIONS)
        return np.maximum(self.last_w - self._step_w, 0.0)

    def _track(self, x: np.ndarray, action: np.ndarray) -> None:
        """Bumpless transfer: the PI's integrator follows the total actually sent."""
        if isinstance(self.fallback, PIController):
            self.fallback.u[:] = min(float(action.sum()), float(np.sum(x[_AVAIL_L])))

    def _fall_back(self, now: float, duration_s: float, reason: str) -> None:
        self.timers.fall_back(now, duration_s, reason)

    def _emit(
        self, action: np.ndarray, source: str, fired: list[str], z_max: float, policy_s: float
    ) -> Decision:
        a = np.asarray(action, dtype=np.float64).reshape(N_ACTIONS)
        bounded = np.fmin(np.fmax(a, 0.0), self.max_w)  # fmax/fmin drop NaN: NaN -> 0 W, +-inf -> the bounds
        if np.any(bounded != a):
            fired.append("bounds")
        self.last_w = bounded
        return Decision(bounded.copy(), source, tuple(fired), self.timers.fallback_until, z_max, policy_s)
