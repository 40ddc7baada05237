"""The controllable devices of a CityLearn env, and their state read from a raw observation vector.

A :class:`DeviceTable` says, for the central agent of any CityLearn schema: which action slot drives which
device (each building's battery, each EV charger), the device's physical limits (battery capacity, power,
depth of discharge; charger powers and efficiency), and where each quantity a controller or a safety check
needs sits in the raw (unscaled) central observation vector. It is plain data: it serialises to a dict
(a bundle's manifest carries it) and is read back without CityLearn, so the rule-based controller
(:func:`rbc_action`) and the CityLearn safety wrapper (``serve/citylearn_safety.py``) run on the edge with
numpy alone.

:class:`DeviceState` is what they read each step. It comes either from the raw observation vector
(:meth:`DeviceTable.state_from_raw`, what a bundle sees) or straight from the simulator
(:func:`state_from_env`, which works even where a schema leaves observations inactive); tests check that
both give the same values on the mall and the 2022 district.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

EV_PREFIX = "electric_vehicle_storage_"
BATTERY_ACTION = "electrical_storage"
CHARGER_OBS = {
    "connected": "electric_vehicle_charger_{cid}_connected_state",
    "hours": "connected_electric_vehicle_at_charger_{cid}_departure_time",
    "required": "connected_electric_vehicle_at_charger_{cid}_required_soc_departure",
    "soc": "connected_electric_vehicle_at_charger_{cid}_soc",
    "capacity": "connected_electric_vehicle_at_charger_{cid}_battery_capacity",
}
"""Raw observation names of a charger's vehicle (CityLearn 3.0.2); ``departure_time`` counts steps."""


@dataclass(frozen=True)
class BatterySpec:
    """A building's stationary battery (CityLearn ``electrical_storage``)."""

    slot: int
    """Index of its action in the central action vector (share of ``nominal_power_kw``, + charges)."""
    capacity_kwh: float
    nominal_power_kw: float
    depth_of_discharge: float
    """Share of the capacity that may be discharged: SoC stays within [1 - depth_of_discharge, 1]."""
    efficiency: float
    soc_index: int | None = None
    """Index of ``electrical_storage_soc`` in the raw observation vector (None: not observed)."""

    @property
    def soc_min(self) -> float:
        return max(1.0 - self.depth_of_discharge, 0.0)


@dataclass(frozen=True)
class ChargerSpec:
    """An EV charger (one socket) and the vehicles that use it."""

    charger_id: str
    slot: int
    """Index of its action: share of ``max_charging_power_kw`` (negative: V2G, of the discharging power)."""
    max_charging_power_kw: float
    min_charging_power_kw: float
    max_discharging_power_kw: float
    min_discharging_power_kw: float
    efficiency: float
    vehicle_capacity_kwh: float | None = None
    """Battery capacity of every vehicle this charger hosts in the simulated window, when they all have the
    same (else None, as for a charger no vehicle uses in the window: it must then be observed)."""
    obs: dict[str, int] = field(default_factory=dict)
    """Raw observation index of each of :data:`CHARGER_OBS`'s quantities that the schema makes active."""

    @property
    def action_low(self) -> float:
        """-1 where the charger can discharge a vehicle (V2G), else 0."""
        return -1.0 if self.max_discharging_power_kw > 0 else 0.0


@dataclass(frozen=True)
class BuildingSpec:
    name: str
    load_index: int | None
    """Index of ``non_shiftable_load`` in the raw observation vector (None: not observed)."""
    pv_index: int | None
    """Index of ``solar_generation`` (None: not observed)."""
    battery: BatterySpec | None
    chargers: tuple[ChargerSpec, ...]


@dataclass(frozen=True)
class DeviceTable:
    """Every controllable device of an env, its limits and where its state is observed."""

    step_hours: float
    action_names: tuple[str, ...]
    observation_names: tuple[str, ...]
    """Raw central observation names, in the order of the vector (repeated per building)."""
    buildings: tuple[BuildingSpec, ...]

    @property
    def n_actions(self) -> int:
        return len(self.action_names)

    @property
    def chargers(self) -> list[ChargerSpec]:
        return [c for b in self.buildings for c in b.chargers]

    def kind_groups(self) -> tuple[tuple[str, ...], np.ndarray]:
        """The kinds of device present (``battery``, ``charger``, in that order) and each action slot's kind
        index: how a correction per kind (``residual_per: kind``) spreads over the slots."""
        slot_kind = {b.battery.slot: "battery" for b in self.buildings if b.battery is not None}
        slot_kind.update({c.slot: "charger" for c in self.chargers})
        kinds = tuple(k for k in ("battery", "charger") if k in slot_kind.values())
        return kinds, np.array([kinds.index(slot_kind[s]) for s in range(self.n_actions)], dtype=np.int64)

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-slot bounds in the action's units: battery [-1, 1]; charger [0 or -1 (V2G), 1]."""
        low = np.full(self.n_actions, -1.0)
        high = np.ones(self.n_actions)
        for c in self.chargers:
            low[c.slot] = c.action_low
        return low, high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceTable:
        """Inverse of :meth:`to_dict` (a manifest's ``devices``). Raises KeyError/TypeError on a bad dict."""
        buildings = []
        for b in data["buildings"]:
            battery = BatterySpec(**b["battery"]) if b.get("battery") else None
            chargers = tuple(ChargerSpec(**c) for c in b.get("chargers", ()))
            buildings.append(
                BuildingSpec(b["name"], b.get("load_index"), b.get("pv_index"), battery, chargers)
            )
        return cls(
            float(data["step_hours"]),
            tuple(data["action_names"]),
            tuple(data["observation_names"]),
            tuple(buildings),
        )

    @classmethod
    def from_env(cls, env: Any) -> DeviceTable:
        """The table of a ``citylearn.citylearn.CityLearnEnv`` with a central agent."""
        names = list(env.observation_names[0])
        per_building = _raw_positions(env)
        slot = 0
        buildings = []
        for i, b in enumerate(env.buildings):
            pos = per_building[i]
            battery, chargers = None, []
            by_id = {c.charger_id: c for c in (b.electric_vehicle_chargers or [])}
            for action in b.active_actions:
                if action == BATTERY_ACTION:
                    s = b.electrical_storage
                    battery = BatterySpec(
                        slot,
                        float(s.capacity),
                        float(s.nominal_power),
                        float(s.depth_of_discharge),
                        float(s.efficiency),
                        pos.get("electrical_storage_soc"),
                    )
                elif action.startswith(EV_PREFIX):
                    cid = action[len(EV_PREFIX) :]
                    c = by_id[cid]
                    obs = {
                        k: pos[n.format(cid=cid)] for k, n in CHARGER_OBS.items() if n.format(cid=cid) in pos
                    }
                    chargers.append(
                        ChargerSpec(
                            cid,
                            slot,
                            float(c.max_charging_power),
                            float(c.min_charging_power),
                            float(c.max_discharging_power),
                            float(c.min_discharging_power),
                            float(c.efficiency),
                            _fixed_capacity(env, c),
                            obs,
                        )
                    )
                slot += 1
            buildings.append(
                BuildingSpec(
                    b.name,
                    pos.get("non_shiftable_load"),
                    pos.get("solar_generation"),
                    battery,
                    tuple(chargers),
                )
            )
        return cls(
            float(env.seconds_per_time_step) / 3600.0,
            tuple(env.action_names[0]),
            tuple(names),
            tuple(buildings),
        )

    def missing_for_raw_state(self) -> list[str]:
        """Observations :meth:`state_from_raw` needs that the schema leaves inactive (empty: none)."""
        missing = []
        for b in self.buildings:
            if b.load_index is None:
                missing.append(f"{b.name}: non_shiftable_load")
            if b.pv_index is None:
                missing.append(f"{b.name}: solar_generation")
            if b.battery is not None and b.battery.soc_index is None:
                missing.append(f"{b.name}: electrical_storage_soc")
            for c in b.chargers:
                for key in ("connected", "hours", "required", "soc"):
                    if key not in c.obs:
                        missing.append(f"{b.name}: {CHARGER_OBS[key].format(cid=c.charger_id)}")
                if "capacity" not in c.obs and c.vehicle_capacity_kwh is None:
                    missing.append(
                        f"{b.name}: {CHARGER_OBS['capacity'].format(cid=c.charger_id)} (no single "
                        "vehicle capacity for this charger in the simulated window)"
                    )
        return missing

    def state_from_raw(self, raw: np.ndarray) -> DeviceState:
        """The devices' state from a raw central observation vector (as CityLearn returns it)."""
        x = np.asarray(raw, dtype=np.float64).reshape(-1)
        if x.shape[0] != len(self.observation_names):
            raise ValueError(f"observation: expected {len(self.observation_names)} values, got {x.shape[0]}")

        def at(i: int | None, default: float = np.nan) -> float:
            return float(x[i]) if i is not None else default

        chargers = self.chargers
        ev = np.zeros((len(chargers), 5))
        for j, c in enumerate(chargers):
            connected = at(c.obs.get("connected"), 0.0) >= 0.5
            cap = at(c.obs.get("capacity")) if "capacity" in c.obs else (c.vehicle_capacity_kwh or np.nan)
            ev[j] = (
                float(connected),
                at(c.obs.get("soc")),
                at(c.obs.get("required")),
                max(at(c.obs.get("hours")), 0.0) * self.step_hours,  # -1 in some data: leaving now
                cap,
            )
        return DeviceState(
            load=np.array([at(b.load_index) for b in self.buildings]),
            pv=np.array([at(b.pv_index) for b in self.buildings]),
            battery_soc=np.array([at(b.battery.soc_index) if b.battery else np.nan for b in self.buildings]),
            ev=ev,
        )


@dataclass
class DeviceState:
    """What the devices are doing now (energies in kWh per step, SoC 0..1)."""

    load: np.ndarray
    """(buildings,) non-shiftable load of the step."""
    pv: np.ndarray
    """(buildings,) PV generation of the step (>= 0)."""
    battery_soc: np.ndarray
    """(buildings,) battery state of charge (NaN: no battery)."""
    ev: np.ndarray
    """(chargers, 5): connected (0/1), vehicle SoC, required SoC at departure, hours until departure,
    vehicle battery capacity (kWh); in the order of :attr:`DeviceTable.chargers`."""


def _raw_positions(env: Any) -> list[dict[str, int]]:
    """Per building: raw name -> index in the central vector (shared observations: their one index)."""
    names = list(env.observation_names[0])
    shared = set(env.shared_observations)
    out: list[dict[str, int]] = []
    k = 0
    first: dict[str, int] = {}
    for i, b in enumerate(env.buildings):
        pos: dict[str, int] = {}
        for name in b.observations(normalize=False, periodic_normalization=False):
            if i > 0 and name in shared and name in first:
                pos[name] = first[name]
                continue
            if names[k] != name:
                raise RuntimeError(f"CityLearn observation order changed at {k}: {names[k]!r} vs {name!r}")
            pos[name] = k
            first.setdefault(name, k)
            k += 1
        out.append(pos)
    return out


def _fixed_capacity(env: Any, charger: Any) -> float | None:
    """The battery capacity of every vehicle ``charger`` hosts in the simulation, if they all share one."""
    ids = {str(v) for v in np.asarray(charger.charger_simulation.electric_vehicle_id, dtype=object)}
    caps = {float(v.battery.capacity) for v in env.electric_vehicles if v.name in ids}
    return caps.pop() if len(caps) == 1 else None


def state_from_env(env: Any, table: DeviceTable) -> DeviceState:
    """The devices' state read from the simulator itself (every quantity, active or not)."""
    wanted = [
        "non_shiftable_load",
        "solar_generation",
        "electrical_storage_soc",
        "electric_vehicles_chargers_dict",
    ]
    load, pv, soc, rows = [], [], [], []
    for b, spec in zip(env.buildings, table.buildings, strict=True):
        s = b.observations(include_all=True, observation_names=wanted)
        load.append(float(s["non_shiftable_load"]))
        pv.append(float(s["solar_generation"]))
        soc.append(float(s["electrical_storage_soc"]) if spec.battery is not None else np.nan)
        evs = s.get("electric_vehicles_chargers_dict") or {}
        for c in spec.chargers:
            d = evs.get(c.charger_id) or {}
            if d.get("connected") and d.get("required_soc") is not None:
                rows.append(
                    (
                        1.0,
                        float(d["battery_soc"]),
                        float(d["required_soc"]),
                        float(d.get("hours_until_departure") or 0.0),
                        float(d["battery_capacity"]),
                    )
                )
            else:
                rows.append((0.0, np.nan, np.nan, np.nan, np.nan))
    return DeviceState(
        np.array(load), np.array(pv), np.array(soc), np.array(rows, dtype=np.float64).reshape(-1, 5)
    )


SOC_MARGIN = 0.02
"""The rule-based controller aims this much SoC above a vehicle's target (vehicle losses are not observed)."""


def energy_to_target(
    charger: ChargerSpec, soc: float, required: float, capacity: float, soc_margin: float = SOC_MARGIN
) -> float:
    """Grid-side kWh a plugged vehicle still needs to reach ``required + soc_margin`` (at most a full
    battery) through ``charger``: the SoC missing times its capacity, divided by the charger's efficiency."""
    target = min(required + soc_margin, 1.0)
    return max(target - soc, 0.0) * capacity / max(charger.efficiency, 1e-6)


def rbc_action(table: DeviceTable, state: DeviceState, soc_margin: float = SOC_MARGIN) -> np.ndarray:
    """The rule-based controller (``envs/citylearn/baselines.py`` describes the rules), in [-1, 1].

    Per building: each plugged vehicle gets the energy still missing to its target plus ``soc_margin``
    (divided by the charger's efficiency), spread evenly to finish one step before departure, or as fast as
    its socket allows while PV exceeds the load; never V2G. The battery then takes the rest of the PV
    surplus, or covers the residual import, within its nominal power.
    """
    a = np.zeros(table.n_actions, dtype=np.float32)
    h = table.step_hours
    j = 0
    for bi, b in enumerate(table.buildings):
        load, pv = float(state.load[bi]), float(state.pv[bi])
        surplus = pv > load
        ev_total = 0.0
        for c in b.chargers:
            connected, soc, required, hours, cap = state.ev[j]
            j += 1
            if connected < 0.5 or not np.isfinite(required) or required < 0 or not np.isfinite(cap):
                continue
            need = energy_to_target(c, soc, required, cap, soc_margin)
            if need <= 1e-9:
                continue
            p_max = c.max_charging_power_kw * h
            steps_left = hours / h + 1.0  # the departure countdown, in steps, plus this one
            kwh = min(need if surplus else need / max(steps_left - 1.0, 1.0), p_max)
            kwh = max(kwh, c.min_charging_power_kw * h)
            a[c.slot] = kwh / p_max if p_max > 0 else 0.0
            ev_total += kwh
        if b.battery is not None and b.battery.nominal_power_kw > 0:
            nominal = b.battery.nominal_power_kw * h
            a[b.battery.slot] = np.clip(-(load + ev_total - pv) / nominal, -1.0, 1.0)
    return a
