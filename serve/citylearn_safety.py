"""The CityLearn safety wrapper: the one gate between a CityLearn controller and the batteries and chargers.

:meth:`CityLearnSafetyWrapper.decide` takes CityLearn's raw central observation vector (the state a
CityLearn bundle is served: envs/citylearn/observations.py ``raw_spec``) and returns a
:class:`serve.safety.Decision`, the export domain's, whose ``action_w`` here holds the central action
vector (one value per device, in the bundle's ``action.names`` order: a battery's share of its nominal
power, + charges; a charger's share of its maximum charging power, negative = V2G where the charger can).
It calls the wrapped policy itself (serve/safety.py :func:`~serve.safety.policy_step`, the export
wrapper's own code), so it can time it, catch it and replace it. Numpy only: the devices' limits and
where their state sits in the raw vector come from the bundle's :class:`envs.citylearn.devices.DeviceTable`.

Whatever it is given (NaN or inf, a wrong shape, a policy that raises or is too slow), the action it
returns is finite and within every device's limits: the last step of every path is the device checks.

Sources (``Decision.source``), as in the export domain:

* ``policy``: the policy's action, possibly limited by the device checks;
* ``fallback``: the rule-based controller's (envs/citylearn/devices.py ``rbc_action`` on the raw
  observation, :class:`RBCPolicy`), during a timed fallback or when the policy failed this step;
* ``safe``: the state itself is unusable (wrong shape, non-finite, a SoC outside [0, 1], a plug state
  neither 0 nor 1): every battery idle, every charger off.

Checks (the names in ``Decision.checks_fired``), in the order they run:

==================  ==================================================================  ================
check               fires when                                                          effect
==================  ==================================================================  ================
state_invalid       the raw vector is not (n,), not finite, or a device reading is      safe; fallback
                    implausible (SoC outside [-tol, 1 + tol], connected not 0/1)        for 24 h
policy_error        the policy raised                                                   fallback 24 h
policy_late         the policy answered after policy_deadline_s: answer discarded       RBC, one step
policy_deadline     the policy was late deadline_misses times in a row                  fallback 24 h
policy_output       not n finite values within [-1, 1] (+ output_tolerance)             fallback 24 h
battery_power       a battery's action outside [-1, 1] (its nominal power)              clipped
charger_power       a charger's action outside [0, 1] ([-1, 1] with V2G): its limits    clipped
charger_no_vehicle  a charger would charge (or discharge) with no vehicle plugged       set to 0
ev_soc              a plugged vehicle would go above 100 % SoC (below 0 % by V2G)       reduced to fit
battery_soc         a battery would leave [1 - depth_of_discharge, 1] this step         reduced to fit
==================  ==================================================================  ================

Every check that changes the action is counted: ``Decision.checks_fired`` names it, the edge loop and the
Serve app count them (checks.json, the ``checks`` counter of /metrics), and the wrapper keeps its own
totals in :attr:`CityLearnSafetyWrapper.counts`. The timed fallbacks count on ``clock`` (seconds; the
Serve app passes the request's time, the edge the simulated hour).

The SoC checks use the battery model's own arithmetic at the devices' stated efficiencies (CityLearn
3.0.2: a battery stores ``energy * sqrt(efficiency)`` and gives ``energy / sqrt(efficiency)``; a charger
delivers ``energy * efficiency`` to the vehicle): with ``s`` the SoC read this step, ``C`` the capacity,
``P`` the power limit and ``h`` the step in hours, a battery's charge is at most
``(1 - s) C / (sqrt(eff) P h)`` and its discharge at most ``(s - s_min) C sqrt(eff) / (P h)``; a vehicle's
charge at most ``(1 - soc) C / (eff P h)`` (the vehicle's own losses only lower what it stores) and its
V2G discharge at most ``soc C eff / (P h)``. Those are the limits CityLearn itself truncates to, at the
stated efficiencies (CityLearn's change a little with the power): on the 2022 district's first 48 h the
RBC behind the wrapper costs 0.008 % more than the RBC alone (142.035 against 142.023), with the same EV
departures, so the wrapper hardly changes what a simulated site does, and bounds what a real one is asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.citylearn.devices import DeviceTable, rbc_action
from serve.safety import Decision, FallbackGate, ManifestSection, policy_step

SOURCES = ("policy", "fallback", "safe")
DEVICE_CHECKS = ("battery_power", "charger_power", "charger_no_vehicle", "ev_soc", "battery_soc")
"""Checks on the action, in the order they run; each clamps and counts."""


@dataclass(frozen=True)
class CityLearnSafetyLimits(ManifestSection):
    """What the wrapper enforces besides the devices' own limits (a bundle's manifest carries it)."""

    policy_deadline_s: float = 1.0
    """A policy answer later than this (wall clock, s) is discarded; the RBC's goes out instead. Decisions
    are hourly: an ONNX answer takes well under a millisecond."""
    deadline_misses: int = 3
    """This many late answers in a row are a safety violation (timed fallback)."""
    violation_fallback_s: float = 86400.0
    """Fallback to the RBC after a safety violation (s of ``clock``): a day of hourly decisions."""
    invalid_state_fallback_s: float = 86400.0
    """Fallback to the RBC after an unusable state (s)."""
    output_tolerance: float = 1e-5
    """How far outside [-1, 1] a policy's output may lie before it is a violation (then clipped)."""
    state_tolerance: float = 0.01
    """How far outside [0, 1] an observed SoC may lie before the state is unusable (readings round)."""

    def __post_init__(self) -> None:
        for name in ("policy_deadline_s", "deadline_misses"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in (
            "violation_fallback_s",
            "invalid_state_fallback_s",
            "output_tolerance",
            "state_tolerance",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")



class RBCPolicy:
    """The rule-based controller on the raw observation vector (envs/citylearn/devices.py ``rbc_action``:
    the same rules as envs/citylearn/baselines.py ``rbc``, which reads the simulator instead)."""

    def __init__(self, devices: DeviceTable, soc_margin: float | None = None):
        self.devices = devices
        self.kwargs = {} if soc_margin is None else {"soc_margin": float(soc_margin)}

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return rbc_action(self.devices, self.devices.state_from_raw(raw), **self.kwargs).astype(np.float64)


class CityLearnSafetyWrapper(FallbackGate):
    """Wraps a CityLearn policy: validates the state, calls the policy, limits its action, falls back.

    Args:
        limits: The limits (a bundle's ``safety``).
        devices: The bundle's device table (limits, action slots, where each reading sits in the vector).
        policy: The controller: raw observation (n_raw,) -> actions (n_actions,) in [-1, 1].
        fallback: The fallback controller, the same contract (default :class:`RBCPolicy`).
        clock: Seconds, for the timed fallbacks (default ``time.monotonic``).
        timer: Seconds, for the policy deadline (default ``time.perf_counter``).
    """

    def __init__(
        self,
        limits: CityLearnSafetyLimits,
        devices: DeviceTable,
        policy: Callable[[np.ndarray], Any],
        fallback: Callable[[np.ndarray], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[], float] = time.perf_counter,
    ):
        missing = devices.missing_for_raw_state()
        if missing:
            raise ValueError(
                f"the schema leaves observations the safety checks need inactive: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}"
            )
        self.limits, self.devices, self.policy = limits, devices, policy
        self.fallback = fallback if fallback is not None else RBCPolicy(devices)
        self.clock, self.timer = clock, timer
        self.n_raw = len(devices.observation_names)
        self.n_actions = devices.n_actions
        self.low, self.high = devices.action_bounds()
        h = devices.step_hours
        bats = [
            b.battery for b in devices.buildings if b.battery is not None and b.battery.nominal_power_kw > 0
        ]
        self._bat_slot = np.array([b.slot for b in bats], dtype=np.intp)
        self._bat_soc = np.array([b.soc_index for b in bats], dtype=np.intp)
        root = np.sqrt(np.array([min(max(b.efficiency, 1e-6), 1.0) for b in bats]))
        per_share = np.array([b.nominal_power_kw * h for b in bats])  # kWh of a full-power step
        cap = np.array([b.capacity_kwh for b in bats])
        self._bat_in = cap / (root * per_share) if bats else np.zeros(0)  # charge share per unit of room
        self._bat_out = cap * root / per_share if bats else np.zeros(0)
        self._bat_min = np.array([b.soc_min for b in bats])
        chargers = devices.chargers
        self._ch_slot = np.array([c.slot for c in chargers], dtype=np.intp)
        self._ch_conn = np.array([c.obs["connected"] for c in chargers], dtype=np.intp)
        self._ch_soc = np.array([c.obs["soc"] for c in chargers], dtype=np.intp)
        self._ch_cap_idx = np.array([c.obs.get("capacity", -1) for c in chargers], dtype=np.intp)
        self._ch_cap_fixed = np.array([c.vehicle_capacity_kwh or np.nan for c in chargers], dtype=np.float64)
        eff = np.array([min(max(c.efficiency, 1e-6), 1.0) for c in chargers])
        self._ch_in = 1.0 / (eff * np.array([max(c.max_charging_power_kw, 1e-9) * h for c in chargers]))
        self._ch_out = eff / np.array([max(c.max_discharging_power_kw, 1e-9) * h for c in chargers])
        self._is_battery = np.zeros(self.n_actions, dtype=bool)
        self._is_battery[self._bat_slot] = True
        self.counts: dict[str, int] = {}
        """How often each check fired since construction (or :meth:`reset_counts`)."""
        self.reset()

    def reset(self) -> None:
        """Forget the timers and the fallback's state (a new episode or a restart); counts are kept."""
        self._restart()

    def reset_counts(self) -> None:
        self.counts = {}

    def decide(self, state: Any) -> Decision:
        """The actions to send for ``state`` (the raw vector, (n_raw,) or (1, n_raw)), with provenance."""
        now, x = self._checked_state(state, self.limits.invalid_state_fallback_s)
        if x is None:
            return self._emit(np.zeros(self.n_actions), "safe", ["state_invalid"], 0.0)
        fired: list[str] = []
        rbc = self._fallback_action(x)
        action, policy_s = policy_step(
            self.policy, x, self.n_actions, self.limits, self.timers, self.timer, fired, now
        )
        source = "policy"
        if action is None:
            source, action = "fallback", rbc
        if action is None:  # the fallback itself failed: nothing trustworthy this step
            return self._emit(np.zeros(self.n_actions), "safe", fired, policy_s)
        return self._emit(self.limit(x, action, fired), source, fired, policy_s)

    # --- steps of decide

    def _valid_state(self, state: Any) -> np.ndarray | None:
        try:
            x = np.asarray(state, dtype=np.float64)
        except Exception:  # noqa: BLE001 - whatever it is, it is not a state vector
            return None
        if x.shape == (1, self.n_raw):
            x = x[0]
        if x.shape != (self.n_raw,) or not np.all(np.isfinite(x)):
            return None
        tol = self.limits.state_tolerance
        conn = x[self._ch_conn]
        if not np.all((conn == 0.0) | (conn == 1.0)):
            return None
        socs = np.concatenate([x[self._bat_soc], x[self._ch_soc][conn == 1.0]])
        if not np.all((socs >= -tol) & (socs <= 1.0 + tol)):
            return None
        return x

    def _fallback_action(self, x: np.ndarray) -> np.ndarray | None:
        try:
            a = np.asarray(self.fallback(x), dtype=np.float64).reshape(self.n_actions)
        except Exception:  # noqa: BLE001 - the gate must not fall over with its fallback
            return None
        return a if np.all(np.isfinite(a)) else None

    def limit(self, x: np.ndarray, action: np.ndarray, fired: list[str]) -> np.ndarray:
        """``action`` within every device's limits for the valid raw state ``x`` (the device checks)."""
        a = np.fmin(np.fmax(np.asarray(action, dtype=np.float64), self.low), self.high)  # NaN -> low
        moved = np.abs(a - action) > 1e-12
        if np.any(moved[self._is_battery]):
            fired.append("battery_power")
        if np.any(moved[~self._is_battery]):
            fired.append("charger_power")
        if self._ch_slot.size:
            ca = a[self._ch_slot]
            plugged = x[self._ch_conn] == 1.0
            absent = ~plugged & (ca != 0.0)
            if np.any(absent):
                fired.append("charger_no_vehicle")
                ca = np.where(absent, 0.0, ca)
            soc = np.clip(x[self._ch_soc], 0.0, 1.0)
            cap = np.where(self._ch_cap_idx >= 0, x[np.maximum(self._ch_cap_idx, 0)], self._ch_cap_fixed)
            up = np.maximum((1.0 - soc) * cap * self._ch_in, 0.0)
            down = np.maximum(soc * cap * self._ch_out, 0.0)
            fit = np.where(plugged, np.minimum(np.maximum(ca, -down), up), ca)
            if np.any(fit != ca):
                fired.append("ev_soc")
            a[self._ch_slot] = fit
        if self._bat_slot.size:
            ba = a[self._bat_slot]
            s = np.clip(x[self._bat_soc], 0.0, 1.0)
            up = np.maximum((1.0 - s) * self._bat_in, 0.0)
            down = np.maximum((s - self._bat_min) * self._bat_out, 0.0)
            fit = np.minimum(np.maximum(ba, -down), up)
            if np.any(fit != ba):
                fired.append("battery_soc")
            a[self._bat_slot] = fit
        return a

    def _emit(self, action: np.ndarray, source: str, fired: list[str], policy_s: float) -> Decision:
        for c in fired:
            self.counts[c] = self.counts.get(c, 0) + 1
        a = np.asarray(action, dtype=np.float64).copy()
        return Decision(a, source, tuple(fired), self.timers.fallback_until, 0.0, policy_s)
