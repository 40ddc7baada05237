"""Baseline controllers of the CityLearn domain: no control and rule-based control.

A controller is any callable ``obs -> action`` on :class:`envs.citylearn.env.CityLearnRLlibEnv`
(``reset()`` optional). The baselines read the simulator's state by name from the env's CityLearnEnv
(current load, PV, each plugged vehicle's SoC, target and hours to departure) rather than from the scaled
observation vector; a policy sees only the vector.

- ``no_control``: what the site does with no controller: the battery stays idle, every plugged vehicle
  charges at its socket's full power until its battery is full (plug and charge).
- ``rbc`` (ours, :class:`SelfConsumptionRBC`): per building and step,

  1. each plugged vehicle gets the energy still missing to its required SoC plus 0.02 (divided by the
     charger's efficiency), spread evenly to finish one step before departure; while PV exceeds the
     building's load, it charges as fast as its socket allows (up to that SoC only); never V2G;
  2. the battery absorbs what is left of the PV surplus, ``load + EV charging - PV < 0``, and covers the
     residual import when it is > 0, within its nominal power (CityLearn enforces SoC and depth of
     discharge).

  CityLearn's own EV controller (``citylearn_rbc`` here) does not fit the mall: it is a fixed hourly
  schedule written for homes (battery discharging 09-21 h, which at a PV mall means exporting its
  energy; EVs discharged 10-20 h, which motorbike sockets cannot do and which leaves vehicles short).
- ``citylearn_rbc``: ``citylearn.agents.rbc.BasicElectricVehicleRBC_ReferenceController``, for reference.
- ``zero``: every action 0 (battery idle, no EV charging): CityLearn's own "no control" action.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from envs.citylearn.env import CityLearnRLlibEnv

STATE = ("non_shiftable_load", "solar_generation", "electric_vehicles_chargers_dict")
EV_PREFIX = "electric_vehicle_storage_"


class Controller(Protocol):
    """Anything that maps an observation vector to an action vector."""

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


class _EnvController:
    """Base of the baselines: knows where each building's actions sit in the central action vector."""

    def __init__(self, env: CityLearnRLlibEnv) -> None:
        self.env = env
        self.slots: list[dict[str, int]] = []
        i = 0
        for b in env.citylearn.buildings:
            slots = {}
            for name in b.active_actions:
                slots[name] = i
                i += 1
            self.slots.append(slots)
        self.n_actions = i

    def reset(self) -> None:
        """Nothing to reset; subclasses with state override it."""

    def state(self, building: Any) -> dict[str, Any]:
        """Current load, PV and plugged vehicles of ``building`` (CityLearn names)."""
        return building.observations(include_all=True, observation_names=list(STATE))


class ZeroAction(_EnvController):
    """Every action 0."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(self.n_actions, dtype=np.float32)


class NoControl(_EnvController):
    """Battery idle; every socket at full charging power (vehicles charge until full)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = np.zeros(self.n_actions, dtype=np.float32)
        for slots in self.slots:
            for name, i in slots.items():
                if name.startswith(EV_PREFIX):
                    a[i] = 1.0
        return a


class SelfConsumptionRBC(_EnvController):
    """Rule-based control: EVs to their target just in time (fast on PV surplus), battery on the residual.

    See the module docstring for the rules.
    """

    soc_margin = 0.02
    """Aim this much SoC above the target: vehicle battery losses are not observed."""

    def _ev_kwh(self, data: dict[str, Any], charger: Any, surplus: bool, step_h: float) -> float:
        if not data.get("connected") or data.get("required_soc") is None:
            return 0.0
        target = min(float(data["required_soc"]) + self.soc_margin, 1.0)
        missing = max(target - float(data["battery_soc"]), 0.0) * float(data["battery_capacity"])
        need = missing / max(float(charger.efficiency), 1e-6)
        if need <= 1e-9:
            return 0.0
        p_max = float(charger.max_charging_power) * step_h
        steps_left = float(data.get("hours_until_departure") or 0.0) + 1.0  # a countdown in steps
        kwh = need if surplus else need / max(steps_left - 1.0, 1.0)
        kwh = min(kwh, p_max)
        return max(kwh, float(charger.min_charging_power) * step_h) if kwh > 0 else 0.0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = np.zeros(self.n_actions, dtype=np.float32)
        step_h = float(self.env.citylearn.seconds_per_time_step) / 3600.0
        for b, slots in zip(self.env.citylearn.buildings, self.slots, strict=True):
            s = self.state(b)
            load, pv = float(s["non_shiftable_load"]), float(s["solar_generation"])
            surplus = pv > load
            chargers = {c.charger_id: c for c in (b.electric_vehicle_chargers or [])}
            ev_total = 0.0
            for cid, data in (s.get("electric_vehicles_chargers_dict") or {}).items():
                slot = slots.get(EV_PREFIX + cid)
                if slot is None:
                    continue
                c = chargers[cid]
                kwh = self._ev_kwh(data, c, surplus, step_h)
                a[slot] = kwh / (float(c.max_charging_power) * step_h) if kwh > 0 else 0.0
                ev_total += kwh
            slot = slots.get("electrical_storage")
            nominal = float(b.electrical_storage.nominal_power) * step_h
            if slot is not None and nominal > 0:
                a[slot] = np.clip(-(load + ev_total - pv) / nominal, -1.0, 1.0)
        return a


class CityLearnReferenceRBC(_EnvController):
    """CityLearn's ``BasicElectricVehicleRBC_ReferenceController`` on the raw CityLearn observations."""

    def __init__(self, env: CityLearnRLlibEnv) -> None:
        super().__init__(env)
        from citylearn.agents.rbc import BasicElectricVehicleRBC_ReferenceController

        self.agent = BasicElectricVehicleRBC_ReferenceController(env.citylearn)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self.agent.predict(self.env.citylearn.observations)[0], dtype=np.float32)


BASELINES: dict[str, Callable[[CityLearnRLlibEnv], Controller]] = {
    "no_control": NoControl,
    "rbc": SelfConsumptionRBC,
    "citylearn_rbc": CityLearnReferenceRBC,
    "zero": ZeroAction,
}


def make_baseline(name: str, env: CityLearnRLlibEnv) -> Controller:
    """The baseline controller ``name`` (a key of :data:`BASELINES`) bound to ``env``.

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    if name not in BASELINES:
        raise ValueError(f"controllers: unknown controller {name!r} (known: {', '.join(BASELINES)}, policy)")
    return BASELINES[name](env)
