"""One site's controllers in the policy server: the bundle's policy and the PI, each behind a safety wrapper.

Each request evaluates both (serve/modes.py picks which one's targets are sent):

* the **policy gate**: the bundle behind :class:`serve.safety.SafetyWrapper`, exactly as on the edge
  (``Bundle.make_wrapper``): all checks, timed fallback to its PI;
* the **PI gate**: the PI (envs/controllers.py, default gains: the controller the sites ran before) behind a
  wrapper with only the hard checks (no_import, bounds), as the wrapper treats its own fallback PI:
  clipping it with limits meant for a learned policy would change a validated controller.

Both wrappers keep memory between seconds (previous targets for the rate limit, the PI's integrator). The
one that did not act is told what was sent (:func:`follow`): the PI's integrator follows the targets
actually sent, like the wrapper's own bumpless tracking, so a switch from one to the other is bumpless.

**Continuity.** A session trusts its memory only while the site's requests come in order from the same
replica: the state's previous targets (``target_w_l1..3``) equal what this session sent last, within
1 W, and at most 2.5 s ago. Otherwise (first request, another replica served the last second, a restart,
a gap) it resumes from the state itself (:func:`resume_from_state`): the rate limit starts from the
state's previous targets, the PI's integrator from their sum, its previous error from
``export_error_w - export_w_delta_1s``. So a site whose requests alternate between replicas is still
controlled by one consistent PI. The wrapper's *timers* (1 h fallback after a violation, 24 h after an
anomaly) stay per replica: the deployment-wide rollback (serve/rollback.py) is what acts for all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from envs.controllers import PIController
from envs.state_spec import FEAT
from serve.bundle import Bundle, ControllerPolicy
from serve.safety import VIOLATIONS, Decision, SafetyWrapper

_TARGET = [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]
_AVAIL = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]
_EXPORT = [FEAT[f"export_w_l{p}"] for p in (1, 2, 3)]
_ACKED = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
_EXPORT_TOTAL = FEAT["export_w"]
CONTINUITY_W = 1.0
CONTINUITY_S = 2.5


@dataclass(frozen=True)
class Served:
    """What one request got."""

    sent_w: np.ndarray
    """The targets returned (W)."""
    source: str
    """policy, pi or fallback."""
    checks: tuple[str, ...]
    """Checks that fired in the decision that was sent."""
    policy: Decision
    """The policy gate's decision (evaluated in every mode)."""
    pi: Decision
    """The PI gate's decision."""
    policy_acted: bool
    """The mode routed the request to the policy."""
    resumed: bool
    """The session resumed from the state (no continuity)."""


def _pis(wrapper: SafetyWrapper) -> list[PIController]:
    """The PI controllers inside a wrapper: its fallback, and its policy if that is a PI bundle."""
    out = [wrapper.fallback] if isinstance(wrapper.fallback, PIController) else []
    inner = getattr(wrapper.policy, "controller", None)
    if isinstance(inner, PIController):
        out.append(inner)
    return out


def follow(wrapper: SafetyWrapper, x: np.ndarray, sent_w: np.ndarray) -> None:
    """Tell a wrapper that did not act what was sent: its rate limit and PI integrators follow it."""
    wrapper.last_w = np.asarray(sent_w, np.float64).copy()
    total = min(float(np.sum(sent_w)), float(np.sum(x[_AVAIL])))
    for pi in _pis(wrapper):
        pi.u[:] = total


def resume_from_state(wrapper: SafetyWrapper, x: np.ndarray) -> None:
    """Rebuild a wrapper's memory from the state alone (see the module docstring)."""
    wrapper.last_w = None
    total = min(max(float(np.sum(x[_TARGET])), 0.0), max(float(np.sum(x[_AVAIL])), 0.0))
    e_prev = float(x[FEAT["export_error_w"]] - x[FEAT["export_w_delta_1s"]])
    for pi in _pis(wrapper):
        pi.u = np.array([total])
        pi.e_prev = np.array([e_prev])


class SiteSession:
    """The two gates of one site (module docstring)."""

    def __init__(self, bundle: Bundle, policy: Any = None):
        self.now = 0.0
        clock = lambda: self.now  # noqa: E731 - the wrapper's timers run on the site's meter time
        self.policy_gate = bundle.make_wrapper(clock=clock, policy=policy)
        hard_only = replace(
            bundle.limits,
            max_rate_w_per_s=None,
            max_phase_spread_w=None,
            anomaly_z=None,  # the policy gate watches for anomalies; the PI has nothing to fall back to
            policy_deadline_s=60.0,  # a host stall must not swap one PI for another
        )
        pi = ControllerPolicy(PIController(), bundle.max_power_per_phase_w)
        self.pi_gate = SafetyWrapper(hard_only, bundle.normalizer, pi, clock=clock)
        self.last_sent: np.ndarray | None = None
        self.last_time = -np.inf
        self.last_measured_by: str | None = None
        self.fallback_since: float | None = None

    def _continuous(self, x: np.ndarray, time_s: float) -> bool:
        if self.last_sent is None or not 0.0 < time_s - self.last_time <= CONTINUITY_S:
            return False
        return bool(np.max(np.abs(x[_TARGET] - self.last_sent)) <= CONTINUITY_W)

    def decide(self, x: np.ndarray, time_s: float, policy_routed: bool) -> Served:
        """Evaluate both gates on state ``x`` at meter time ``time_s``; send the routed one's targets."""
        resumed = not self._continuous(x, time_s)
        if resumed:
            resume_from_state(self.policy_gate, x)
            resume_from_state(self.pi_gate, x)
        self.now = float(time_s)
        pol = self.policy_gate.decide(x)
        pid = self.pi_gate.decide(x)
        if policy_routed:
            acting, source = pol, ("policy" if pol.source == "policy" else "fallback")
            follow(self.pi_gate, x, pol.action_w)
        else:
            acting, source = pid, ("pi" if pid.source == "policy" else "fallback")
            follow(self.policy_gate, x, pid.action_w)
        self.last_sent, self.last_time = acting.action_w.copy(), float(time_s)
        return Served(acting.action_w, source, acting.checks_fired, pol, pid, policy_routed, resumed)

    def figures(self, x: np.ndarray, served: Served, differ_w: float) -> dict[str, float]:
        """Monitoring figures of one decision (serve/metrics.py): the export each controller's targets
        lead to by the wrapper's one-step prediction (surplus ``export + acked`` minus the targets, summed
        over phases, positive part), the export the meter read (attributed to the controller that acted
        the second before), whether the two proposals differ, and how long the policy gate has been in
        its timed fallback (s of meter time)."""
        period_h = self.policy_gate.limits.decision_period_s / 3600.0
        surplus = float(np.sum(x[_EXPORT]) + np.sum(x[_ACKED]))
        measured_by = self.last_measured_by
        self.last_measured_by = "policy" if served.policy_acted else "pi"
        if self.policy_gate.in_fallback:
            if self.fallback_since is None:
                self.fallback_since = self.now
            fallback_s = self.now - self.fallback_since
        else:
            self.fallback_since, fallback_s = None, 0.0
        return {
            "export_policy_wh": max(surplus - float(np.sum(served.policy.action_w)), 0.0) * period_h,
            "export_pi_wh": max(surplus - float(np.sum(served.pi.action_w)), 0.0) * period_h,
            "measured_wh": max(float(x[_EXPORT_TOTAL]), 0.0) * period_h,
            "measured_by": measured_by,
            "differ": bool(np.max(np.abs(served.policy.action_w - served.pi.action_w)) > differ_w),
            "fallback_s": fallback_s,
            "violation": any(c in VIOLATIONS for c in served.policy.checks_fired),
            "anomaly": "anomaly" in served.policy.checks_fired,
        }
