"""Baseline controllers of the export domain: PI, zero (no control), random; the oracle is envs/oracle.py.
A trained policy becomes a controller through :class:`PolicyController`.

A controller maps a batch of state vectors (B, 30) to per-phase targets (B, 3) in W. It reads only the
state vector (envs/state_spec.py), so the same code runs in the simulator, as the safety wrapper's
fallback and on the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from envs.actions import to_watts
from envs.dispatch import allocate_to_phases
from envs.state_spec import FEAT

_EXPORT_L = [FEAT[f"export_w_l{p}"] for p in (1, 2, 3)]
_ACKED_L = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
_AVAIL_L = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]


class Controller(Protocol):
    """What every export-domain controller offers."""

    name: str

    def reset(self, batch: int = 1) -> None:
        """Forget internal state; ``batch`` episodes follow."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Per-phase targets (B, 3) in W for state vectors ``obs`` (B, 30)."""


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
        surplus_l = obs[:, _EXPORT_L] + obs[:, _ACKED_L]
        return allocate_to_phases(self.u, surplus_l, available)

    def state(self) -> np.ndarray:
        """The integrator (total output, W) per batch member, for the PI-state log."""
        return self.u.copy()


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
        """Actions in [-1, 1] (B, 3) for raw state vectors (B, 30)."""


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
