"""The CityLearn site: a building with PV, a battery, EV charging sockets, a tariff and a grid CO2 factor.

A site is data: it is read from a YAML file (see ``envs/sites/iquitos_mall.yaml``) into the frozen
dataclasses below, through :func:`envs.config.from_mapping`. A bad field is a
:class:`~envs.config.ConfigError` that names the file and the field. The schema builder
(:mod:`envs.citylearn.schema`) turns a site into a CityLearn ``schema.json`` plus its time series.

Units are in the field names (kW, kWh, kWp, h, kg/kWh) or stated in the field's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from envs.config import from_mapping, load_yaml

DEFAULT_MALL_SITE_PATH = Path(__file__).resolve().parents[1] / "sites" / "iquitos_mall.yaml"


def _require(cond: bool, field_name: str, problem: str) -> None:
    if not cond:
        raise ValueError(f"{field_name}: {problem}")


def _check_range(pair: tuple[float, float], name: str, lo: float, hi: float) -> None:
    a, b = pair
    _require(
        lo <= a <= b <= hi, name, f"must be [low, high] with {lo} <= low <= high <= {hi}, got {list(pair)}"
    )


@dataclass(frozen=True)
class Location:
    """Where the site is; sets the sun's path."""

    latitude_deg: float
    """Latitude in degrees, north positive (Iquitos: -3.7)."""
    longitude_deg: float
    """Longitude in degrees, east positive (Iquitos: -73.25)."""
    utc_offset_h: float
    """Local clock time minus UTC, in hours (Peru: -5, no daylight saving)."""

    def __post_init__(self) -> None:
        _require(
            -66.0 <= self.latitude_deg <= 66.0, "latitude_deg", "must be within [-66, 66] (no polar sites)"
        )
        _require(-180.0 <= self.longitude_deg <= 180.0, "longitude_deg", "must be within [-180, 180]")
        _require(-12.0 <= self.utc_offset_h <= 14.0, "utc_offset_h", "must be within [-12, 14]")


@dataclass(frozen=True)
class Calendar:
    """The simulated year."""

    year: int = 2023
    """Calendar year of the first day (day types follow it). 2023 has 365 days: 8,760 hourly steps."""
    days: int = 365
    """Days in the full profile; the annual totals below are met over these days."""
    holidays: tuple[str, ...] = ()
    """Public holidays as MM-DD; CityLearn day_type 8 on those days (mall traffic as on a Sunday)."""

    def __post_init__(self) -> None:
        _require(1 <= self.days <= 366, "days", f"must be within [1, 366], got {self.days}")
        for h in self.holidays:
            parts = h.split("-")
            ok = len(parts) == 2 and all(p.isdigit() for p in parts)
            _require(
                ok and 1 <= int(parts[0]) <= 12 and 1 <= int(parts[1]) <= 31, "holidays", f"bad MM-DD {h!r}"
            )


@dataclass(frozen=True)
class PVConfig:
    """The PV plant, as CityLearn sees it: nominal power times a W-per-kW output series."""

    kwp: float
    """Installed peak power (kWp), CityLearn's ``pv.attributes.nominal_power``."""
    performance_ratio: float = 0.80
    """AC output over (irradiance / 1000 W/m2 x kWp) at 25 C cell temperature: wiring, inverter, soiling."""
    temperature_coefficient_per_c: float = -0.004
    """Relative change of output per degree C of cell temperature above 25 C."""
    clearness_mean: tuple[float, ...] = (
        0.60,
        0.60,
        0.59,
        0.61,
        0.64,
        0.68,
        0.70,
        0.71,
        0.68,
        0.65,
        0.62,
        0.60,
    )
    """Mean daily clearness (share of the clear-sky irradiance that arrives), January to December; the
    defaults give about 4.7 kWh/m2/day at 3.7 S, rainy season (November-May) darker."""
    clearness_spread: float = 0.18
    """Standard deviation of the daily clearness around its monthly mean (beta-distributed)."""
    hourly_cloud_std: float = 0.18
    """Standard deviation of the hour-to-hour cloud factor (convective clouds; AR(1), clipped)."""

    def __post_init__(self) -> None:
        _require(self.kwp >= 0, "kwp", f"must be >= 0, got {self.kwp}")
        _require(0 < self.performance_ratio <= 1, "performance_ratio", "must be within (0, 1]")
        _require(len(self.clearness_mean) == 12, "clearness_mean", "needs 12 monthly values")
        _require(
            all(0.05 <= c <= 0.95 for c in self.clearness_mean),
            "clearness_mean",
            "values within [0.05, 0.95]",
        )
        _require(0 <= self.clearness_spread < 0.4, "clearness_spread", "must be within [0, 0.4)")
        _require(0 <= self.hourly_cloud_std < 1, "hourly_cloud_std", "must be within [0, 1)")


@dataclass(frozen=True)
class BatteryConfig:
    """The stationary battery (CityLearn ``electrical_storage``, never autosized)."""

    capacity_kwh: float
    """Usable energy capacity (kWh)."""
    power_kw: float
    """Maximum charge and discharge power (kW); CityLearn's action 1.0 means this power for one step."""
    efficiency: float = 0.95
    """One-way efficiency (CityLearn applies its power-efficiency curve on top)."""
    initial_soc: float = 0.5
    """State of charge at the start of an episode, 0..1."""
    depth_of_discharge: float = 0.9
    """Share of the capacity that may be discharged."""
    capacity_loss_coefficient: float = 1e-5
    """Capacity lost per full cycle, as a share of capacity (a fixed value: CityLearn's default is random)."""

    def __post_init__(self) -> None:
        _require(self.capacity_kwh >= 0, "capacity_kwh", "must be >= 0")
        _require(self.power_kw >= 0, "power_kw", "must be >= 0")
        _require(0 < self.efficiency <= 1, "efficiency", "must be within (0, 1]")
        _require(0 <= self.initial_soc <= 1, "initial_soc", "must be within [0, 1]")
        _require(0 < self.depth_of_discharge <= 1, "depth_of_discharge", "must be within (0, 1]")
        _require(
            0 <= self.capacity_loss_coefficient < 0.01,
            "capacity_loss_coefficient",
            "must be within [0, 0.01)",
        )


@dataclass(frozen=True)
class MallLoad:
    """The building's own (non-shiftable) electricity demand."""

    annual_kwh: float
    """Energy over ``calendar.days``; the generated profile is scaled to meet it exactly."""
    open_hours: tuple[int, int] = (9, 22)
    """Opening and closing hour (local clock): full lighting, escalators, shops."""
    staff_hours: tuple[int, int] = (7, 23)
    """Hours with staff present but the mall closed (preparation, cleaning): partial load."""
    closed_share: float = 0.42
    """Night load (refrigeration, security, IT) as a share of the open-hours base."""
    staff_share: float = 0.70
    """Load in staff-only hours as a share of the open-hours base."""
    cooling_share_per_c: float = 0.035
    """Extra open-hours load per degree C of outdoor temperature above ``cooling_base_c`` (air con)."""
    cooling_base_c: float = 24.0
    """Outdoor temperature above which air conditioning adds load."""
    weekend_factor: float = 1.08
    """Open-hours load multiplier on Saturdays, Sundays and holidays (more shoppers)."""
    monthly_factor: tuple[float, ...] = (0.98, 0.96, 0.97, 0.98, 1.0, 0.99, 1.02, 1.0, 0.99, 1.0, 1.02, 1.10)
    """Seasonality of open-hours activity, January to December (December: holiday shopping)."""
    noise_std: float = 0.03
    """Relative standard deviation of an hourly AR(1) noise on the load."""

    def __post_init__(self) -> None:
        _require(self.annual_kwh > 0, "annual_kwh", "must be > 0")
        for name in ("open_hours", "staff_hours"):
            a, b = getattr(self, name)
            _require(
                0 <= a < b <= 24, name, f"must be [open, close] with 0 <= open < close <= 24, got {[a, b]}"
            )
        _require(
            self.staff_hours[0] <= self.open_hours[0] and self.open_hours[1] <= self.staff_hours[1],
            "staff_hours",
            "must contain open_hours",
        )
        _require(
            0 <= self.closed_share <= 1 and 0 <= self.staff_share <= 1, "closed_share", "shares within [0, 1]"
        )
        _require(len(self.monthly_factor) == 12, "monthly_factor", "needs 12 monthly values")
        _require(all(f > 0 for f in self.monthly_factor), "monthly_factor", "values must be > 0")
        _require(0 <= self.noise_std < 0.5, "noise_std", "must be within [0, 0.5)")


@dataclass(frozen=True)
class VehicleClass:
    """One class of electric vehicles and the sockets reserved for it."""

    name: str
    """Class name, used in vehicle and socket ids (e.g. motorbike, mototaxi)."""
    sockets: int
    """Number of sockets for this class; each socket is one CityLearn charger."""
    battery_kwh: float
    """Vehicle battery capacity (kWh)."""
    socket_power_kw: float
    """Maximum charging power of one socket (kW)."""
    battery_power_kw: float
    """Maximum power the vehicle battery accepts (kW); CityLearn tapers it above 80 % SoC."""
    min_socket_power_kw: float = 0.0
    """Smallest non-zero charging power (kW); smaller requests charge nothing."""
    charger_efficiency: float = 0.95
    """Socket-to-battery efficiency."""
    hours: tuple[int, int] = (9, 22)
    """Window in which vehicles may be plugged (local clock hours, arrival at or after the first, departure
    at or before the second)."""
    sessions_per_socket_day: float = 2.0
    """Mean number of sessions a socket hosts per weekday (weekends and holidays scaled by the mall's
    ``weekend_factor``)."""
    dwell_h: tuple[int, int] = (1, 4)
    """Range of a session's length in whole hours (uniform)."""
    arrival_soc: tuple[float, float] = (0.2, 0.6)
    """Range of state of charge at arrival before the annual energy is matched (uniform)."""
    required_soc: tuple[float, float] = (0.8, 1.0)
    """Range of the state of charge the driver asks for at departure (uniform); capped at what the socket
    can deliver in the session, so every target is feasible."""

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and self.name.isidentifier(), "name", f"must be an identifier, got {self.name!r}"
        )
        _require(self.sockets >= 0, "sockets", "must be >= 0")
        _require(self.battery_kwh > 0, "battery_kwh", "must be > 0")
        _require(self.socket_power_kw > 0, "socket_power_kw", "must be > 0")
        _require(self.battery_power_kw > 0, "battery_power_kw", "must be > 0")
        _require(
            0 <= self.min_socket_power_kw <= self.socket_power_kw, "min_socket_power_kw", "within [0, power]"
        )
        _require(0 < self.charger_efficiency <= 1, "charger_efficiency", "must be within (0, 1]")
        a, b = self.hours
        _require(
            0 <= a < b <= 24, "hours", f"must be [first, last] with 0 <= first < last <= 24, got {[a, b]}"
        )
        _require(self.sessions_per_socket_day >= 0, "sessions_per_socket_day", "must be >= 0")
        lo, hi = self.dwell_h
        _require(1 <= lo <= hi <= b - a, "dwell_h", f"must be [lo, hi] with 1 <= lo <= hi <= {b - a}")
        _check_range(self.arrival_soc, "arrival_soc", 0.0, 1.0)
        _check_range(self.required_soc, "required_soc", 0.0, 1.0)


@dataclass(frozen=True)
class EVConfig:
    """EV charging: physical chargers with several sockets, shared out between vehicle classes."""

    annual_demand_kwh: float
    """Energy the vehicles need over ``calendar.days`` (sum over sessions of (required - arrival SoC) x
    capacity, battery side); arrival SoCs are scaled so that the total is met exactly."""
    chargers: int
    """Physical chargers."""
    sockets_per_charger: int
    """Sockets per physical charger; the sockets of the first chargers go to the first class, and so on."""
    classes: tuple[VehicleClass, ...] = ()
    """Vehicle classes; their sockets must add up to chargers x sockets_per_charger."""
    min_arrival_soc: float = 0.05
    """Lowest arrival SoC allowed when scaling to the annual energy."""

    def __post_init__(self) -> None:
        _require(self.annual_demand_kwh >= 0, "annual_demand_kwh", "must be >= 0")
        _require(
            self.chargers >= 0 and self.sockets_per_charger >= 1,
            "chargers",
            "need chargers >= 0, sockets >= 1",
        )
        total = sum(c.sockets for c in self.classes)
        _require(
            total == self.chargers * self.sockets_per_charger,
            "classes",
            f"sockets of the classes add up to {total}, but chargers x sockets_per_charger = "
            f"{self.chargers} x {self.sockets_per_charger} = {self.chargers * self.sockets_per_charger}",
        )
        names = [c.name for c in self.classes]
        _require(len(set(names)) == len(names), "classes", f"class names must be unique, got {names}")
        _require(0 <= self.min_arrival_soc < 1, "min_arrival_soc", "must be within [0, 1)")


@dataclass(frozen=True)
class Tariff:
    """Time-of-use energy price (currency per kWh)."""

    currency: str = "USD"
    """Currency of the prices; CityLearn's cost KPIs are in it."""
    offpeak_per_kwh: float = 0.12
    """Price outside peak hours."""
    peak_per_kwh: float = 0.16
    """Price in peak hours."""
    peak_hours: tuple[int, int] = (18, 23)
    """Peak period [start, end) in local clock hours."""

    def __post_init__(self) -> None:
        _require(self.offpeak_per_kwh >= 0 and self.peak_per_kwh >= 0, "peak_per_kwh", "prices must be >= 0")
        a, b = self.peak_hours
        _require(0 <= a < b <= 24, "peak_hours", f"must be [start, end) within 0..24, got {[a, b]}")


@dataclass(frozen=True)
class Grid:
    """The grid connection's emissions."""

    carbon_intensity_kg_per_kwh: float = 0.4521
    """CO2 emitted per kWh imported (kg/kWh), constant over the year."""
    ev_avoided_kg_per_kwh: float = 2.146
    """CO2 a petrol vehicle would emit per kWh delivered to an EV (the seed's direct-reduction factor)."""

    def __post_init__(self) -> None:
        _require(self.carbon_intensity_kg_per_kwh >= 0, "carbon_intensity_kg_per_kwh", "must be >= 0")
        _require(self.ev_avoided_kg_per_kwh >= 0, "ev_avoided_kg_per_kwh", "must be >= 0")


@dataclass(frozen=True)
class Weather:
    """Outdoor temperature and humidity (tropical: small seasonal swing, strong daily cycle)."""

    mean_temperature_c: float = 26.8
    """Annual mean air temperature (C)."""
    daily_amplitude_c: float = 4.5
    """Half of the typical day-night temperature swing (C)."""
    seasonal_amplitude_c: float = 0.6
    """Half of the swing of monthly means over the year (C)."""
    forecast_horizons_h: tuple[int, int, int] = (6, 12, 24)
    """Hours ahead of CityLearn's ``*_predicted_1/2/3`` columns (weather and price; perfect forecasts)."""

    def __post_init__(self) -> None:
        _require(self.daily_amplitude_c >= 0, "daily_amplitude_c", "must be >= 0")
        _require(all(1 <= h <= 24 for h in self.forecast_horizons_h), "forecast_horizons_h", "within 1..24 h")


@dataclass(frozen=True)
class CityLearnSite:
    """A whole CityLearn site (one building): see ``envs/sites/iquitos_mall.yaml``."""

    name: str
    """Building name in the schema (an identifier)."""
    location: Location
    pv: PVConfig
    battery: BatteryConfig
    load: MallLoad
    ev: EVConfig
    calendar: Calendar = field(default_factory=Calendar)
    tariff: Tariff = field(default_factory=Tariff)
    grid: Grid = field(default_factory=Grid)
    weather: Weather = field(default_factory=Weather)

    def __post_init__(self) -> None:
        _require(
            self.name.isidentifier(), "name", f"must be an identifier (letters, digits, _), got {self.name!r}"
        )
        for c in self.ev.classes:
            a, b = c.hours
            _require(b <= 24, "ev", f"class {c.name}: hours end after midnight")

    @property
    def socket_ids(self) -> list[str]:
        """CityLearn charger ids, one per socket: ``charger_<physical charger>_<socket>``."""
        return [
            f"charger_{c + 1:02d}_{s + 1}"
            for c in range(self.ev.chargers)
            for s in range(self.ev.sockets_per_charger)
        ]

    @property
    def socket_classes(self) -> list[VehicleClass]:
        """The vehicle class of each socket, in :attr:`socket_ids` order."""
        return [c for c in self.ev.classes for _ in range(c.sockets)]


def load_site(path: str | Path = DEFAULT_MALL_SITE_PATH) -> CityLearnSite:
    """Read a CityLearn site YAML into a :class:`CityLearnSite`.

    Args:
        path: The YAML file.

    Returns:
        The validated site. Raises :class:`envs.config.ConfigError` naming the file and field on bad input.
    """
    return from_mapping(CityLearnSite, load_yaml(path), source=path)
