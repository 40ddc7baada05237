"""The export-control site: PV, base load, controllable loads ("slaves"), Zigbee link, meter, limits.

A site is data: it is read from a YAML file (see ``envs/sites/default.yaml``) into the frozen dataclasses
below. A bad field is a :class:`~envs.config.ConfigError` that names the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from envs.config import ConfigError, from_mapping, load_yaml

DEFAULT_SITE_PATH = Path(__file__).parent / "sites" / "default.yaml"
N_PHASES = 3
SlaveKind = Literal["water_heater", "ev_charger", "heat_pump"]


def _require(cond: bool, field_name: str, problem: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}: {problem}")


@dataclass(frozen=True)
class PVArray:
    """One PV inverter."""

    kwp: float
    """Peak power in kWp (DC, before the 0.86 system derate)."""
    phases: tuple[int, ...] = (1, 2, 3)
    """Phases the inverter feeds (1-based); a three-phase inverter splits equally."""

    def __post_init__(self) -> None:
        _require(self.kwp >= 0, "kwp", f"must be >= 0, got {self.kwp}")
        _require(len(self.phases) > 0, "phases", "must name at least one phase")
        _require(all(p in (1, 2, 3) for p in self.phases), "phases", f"phases are 1, 2 or 3, got {self.phases}")


@dataclass(frozen=True)
class BaseLoad:
    """The uncontrolled load of the site."""

    mean_w: tuple[float, float, float] = (300.0, 300.0, 300.0)
    """Mean always-on load per phase (W), shaped over the day."""
    events_per_day: float = 24.0
    """Expected appliance events (kettle, oven, motor start) per day, Poisson."""

    def __post_init__(self) -> None:
        _require(all(m >= 0 for m in self.mean_w), "mean_w", f"must be >= 0, got {self.mean_w}")
        _require(self.events_per_day >= 0, "events_per_day", "must be >= 0")


@dataclass(frozen=True)
class Slave:
    """A controllable load on one phase, commanded over Zigbee.

    water_heater: continuous 0..max_power_w until its tank is full (thermostat); hot-water draws empty it.
    ev_charger: off, or min_power_w..max_power_w (6 A..32 A at 230 V) while an EV is plugged and not full.
    heat_pump: off or max_power_w, with minimum on and off times that the unit itself enforces.
    """

    id: str
    kind: SlaveKind
    phase: int
    """Phase the load is wired to (1, 2 or 3)."""
    max_power_w: float
    min_power_w: float = 0.0
    """Smallest non-zero power (EV: 1380 W = 6 A at 230 V)."""
    ramp_w_per_s: float = 1000.0
    """How fast the device follows a new setpoint."""
    tank_kwh: float = 0.0
    """water_heater: usable tank energy (kWh); heat_pump: thermal buffer in electric kWh (0 = none)."""
    initial_fill: float = 0.5
    """water_heater / heat_pump with a buffer: state of charge at the episode start, 0..1."""
    draw_kwh_per_day: float = 0.0
    """water_heater: hot water drawn per day (kWh); heat_pump: heat demand per day (electric kWh)."""
    arrive_h: tuple[float, float] = (8.0, 10.0)
    """ev_charger: range of the EV's arrival hour (uniform)."""
    depart_h: tuple[float, float] = (17.0, 19.0)
    """ev_charger: range of the EV's departure hour (uniform)."""
    energy_kwh: tuple[float, float] = (5.0, 15.0)
    """ev_charger: range of the energy the EV wants (uniform)."""
    min_on_s: int = 0
    """heat_pump: minimum run time once started (s)."""
    min_off_s: int = 0
    """heat_pump: minimum rest time once stopped (s)."""

    def __post_init__(self) -> None:
        _require(self.phase in (1, 2, 3), "phase", f"must be 1, 2 or 3, got {self.phase}")
        _require(self.max_power_w > 0, "max_power_w", f"must be > 0, got {self.max_power_w}")
        _require(
            0 <= self.min_power_w <= self.max_power_w,
            "min_power_w",
            f"must be within [0, max_power_w={self.max_power_w}], got {self.min_power_w}",
        )
        _require(self.ramp_w_per_s > 0, "ramp_w_per_s", "must be > 0")
        if self.kind == "water_heater":
            _require(self.tank_kwh > 0, "tank_kwh", "a water_heater needs tank_kwh > 0")
            _require(0 <= self.initial_fill <= 1, "initial_fill", "must be within [0, 1]")
            _require(self.draw_kwh_per_day >= 0, "draw_kwh_per_day", "must be >= 0")
        if self.kind == "ev_charger":
            _require(self.min_power_w > 0, "min_power_w", "an ev_charger needs min_power_w > 0 (6 A = 1380 W)")
            for name in ("arrive_h", "depart_h"):
                lo, hi = getattr(self, name)
                _require(0 <= lo <= hi <= 24, name, f"must be [lo, hi] within 0..24, got {(lo, hi)}")
            _require(self.arrive_h[1] <= self.depart_h[0], "depart_h", "must start after arrive_h ends")
            _require(0 < self.energy_kwh[0] <= self.energy_kwh[1], "energy_kwh", "must be 0 < lo <= hi")
        if self.kind == "heat_pump":
            _require(self.min_on_s >= 0 and self.min_off_s >= 0, "min_on_s", "must be >= 0")
            _require(self.tank_kwh >= 0 and self.draw_kwh_per_day >= 0, "tank_kwh", "must be >= 0")
            _require(0 <= self.initial_fill <= 1, "initial_fill", "must be within [0, 1]")


@dataclass(frozen=True)
class Link:
    """The Zigbee link from the master controller to the slaves."""

    delay_median_s: float = 2.0
    """Median of the lognormal command delay (s)."""
    delay_sigma: float = 0.5
    """Shape of the lognormal delay."""
    delay_max_s: float = 8.0
    """Delays are clipped to this (s)."""
    ack_rate: float = 0.95
    """Probability that a command arrives; a lost command gets no acknowledgement."""
    retry_after_s: int = 6
    """The master resends a command that has not been acknowledged after this many seconds."""

    def __post_init__(self) -> None:
        _require(self.delay_median_s > 0, "delay_median_s", "must be > 0")
        _require(self.delay_sigma >= 0, "delay_sigma", "must be >= 0")
        _require(self.delay_max_s >= self.delay_median_s, "delay_max_s", "must be >= delay_median_s")
        _require(self.delay_max_s <= 15, "delay_max_s", "must be <= 15 s (the in-flight queue holds 16 s)")
        _require(0 < self.ack_rate <= 1, "ack_rate", f"must be within (0, 1], got {self.ack_rate}")
        _require(self.retry_after_s >= 1, "retry_after_s", "must be >= 1")


@dataclass(frozen=True)
class Meter:
    """The grid meter and PV meter, read once a second."""

    noise_w: float = 15.0
    """Standard deviation of the Gaussian noise on each per-phase reading (W)."""
    missing_rate: float = 0.01
    """Share of readings that never arrive (the master holds the last one)."""

    def __post_init__(self) -> None:
        _require(self.noise_w >= 0, "noise_w", "must be >= 0")
        _require(0 <= self.missing_rate < 1, "missing_rate", "must be within [0, 1)")


@dataclass(frozen=True)
class Control:
    """Setpoint and limits of the export controller."""

    export_setpoint_w: float = 0.0
    """The export the controllers aim for (W, total over phases)."""
    export_limit_w: float = 7000.0
    """Grid-connection export limit (W); the safety wrapper and metrics use it."""
    max_power_per_phase_w: float = 7500.0
    """Action bound: per-phase power targets lie in [0, max_power_per_phase_w]."""
    deadband_w: float = 60.0
    """A slave's command is re-sent only when it changes by more than this (W)."""

    def __post_init__(self) -> None:
        _require(self.max_power_per_phase_w > 0, "max_power_per_phase_w", "must be > 0")
        _require(self.deadband_w >= 0, "deadband_w", "must be >= 0")
        _require(self.export_limit_w >= 0, "export_limit_w", "must be >= 0")


@dataclass(frozen=True)
class Site:
    """A whole site, as read from a site YAML file."""

    name: str
    latitude_deg: float
    slaves: tuple[Slave, ...]
    pv: tuple[PVArray, ...]
    timezone_offset_h: float = 0.0
    """Local clock minus UTC (h): the simulated day runs on the local clock."""
    longitude_deg: float = 15.0
    """East positive. Solar time is UTC + longitude / 15 h (envs/solar.py): it places the sun in the day."""
    phases: int = N_PHASES
    """Always 3: the simulator models three-phase sites."""
    base_load: BaseLoad = field(default_factory=BaseLoad)
    link: Link = field(default_factory=Link)
    meter: Meter = field(default_factory=Meter)
    control: Control = field(default_factory=Control)

    def __post_init__(self) -> None:
        _require(self.phases == N_PHASES, "phases", f"only 3-phase sites are modelled, got {self.phases}")
        _require(-66 <= self.latitude_deg <= 66, "latitude_deg", "must be within [-66, 66] (sun rises daily)")
        _require(-180 <= self.longitude_deg <= 180, "longitude_deg", "must be within [-180, 180]")
        _require(len(self.slaves) > 0, "slaves", "a site needs at least one controllable load")
        ids = [s.id for s in self.slaves]
        _require(len(set(ids)) == len(ids), "slaves", f"slave ids must be unique, got {ids}")


def load_site(path: str | Path | None = None) -> Site:
    """Load a site YAML file (the shipped default site when ``path`` is None).

    Raises:
        ConfigError: naming the file and the field, for any missing, unknown or invalid entry.
    """
    p = Path(path) if path is not None else DEFAULT_SITE_PATH
    return from_mapping(Site, load_yaml(p), source=p)


SITE_FEATURE_NAMES = (
    "pv_kwp", "wh_kw", "wh_kwh", "wh_draw_kwh", "hp_kw", "hp_kwh", "hp_draw_kwh", "ev_min_kw", "ev_kwh"
)  # fmt: skip
"""What :func:`site_features` describes, over the whole site: PV peak power, the water heaters' power, tanks
and daily draws, the heat pumps' power, tanks and daily draws, the EV chargers' minimum power and mean
demand per visit."""
SITE_FEATURE_SCALE = np.array([10.0, 4.0, 10.0, 10.0, 2.0, 10.0, 10.0, 2.0, 20.0])
"""What each of :data:`SITE_FEATURE_NAMES` is divided by in :func:`site_features` (kWp, kW, kWh)."""


def site_features(site: Site) -> np.ndarray:
    """The site as a supervising policy is told it (:data:`SITE_FEATURE_NAMES`, float32, each scaled to
    about 0..1): how much PV it has and how much storage its devices offer, whatever their phases (where
    each device sits, the policy's spread knows: envs/controllers.py ``continuous_power``)."""
    f = np.zeros(len(SITE_FEATURE_NAMES))
    f[0] = sum(arr.kwp for arr in site.pv)
    for sl in site.slaves:
        if sl.kind == "water_heater":
            f[1:4] += (sl.max_power_w / 1e3, sl.tank_kwh, sl.draw_kwh_per_day)
        elif sl.kind == "heat_pump":
            f[4:7] += (sl.max_power_w / 1e3, sl.tank_kwh, sl.draw_kwh_per_day)
        elif sl.kind == "ev_charger":
            f[7:9] += (sl.min_power_w / 1e3, sum(sl.energy_kwh) / len(sl.energy_kwh))
    return (f / SITE_FEATURE_SCALE).astype(np.float32)


__all__ = ["ConfigError", "Site", "Slave", "PVArray", "BaseLoad", "Link", "Meter", "Control", "load_site", "site_features", "SITE_FEATURE_NAMES", "SITE_FEATURE_SCALE"]
