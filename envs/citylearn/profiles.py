"""Hourly exogenous profiles of a CityLearn site for a year: calendar, weather, PV, load, tariff, EV sessions.

Every generator takes the site and an ``np.random.Generator``; a seed fixes the year. Profiles are made for
the whole calendar plus one extra day, so that forecasts (``*_predicted_*`` columns) at the end of the year
look at real data; the schema builder then slices the days it writes. Step ``t`` covers local clock time
``[t, t + 1)`` hours from midnight of the first day; CityLearn's ``hour`` column is ``t % 24 + 1`` (1..24).

PV: clear-sky irradiance (Haurwitz, :func:`envs.profiles.clear_sky_ghi`) at the site's latitude, times a
daily clearness (beta-distributed around a monthly mean) and an hourly AR(1) cloud factor; split into
diffuse and direct normal parts with the Erbs correlation; PV output per kWp = irradiance x performance
ratio x a cell-temperature derate.

Load: a closed / staff / open pattern over the day, air conditioning that follows the outdoor temperature,
weekend and monthly activity factors and a small AR(1) noise, scaled to the annual energy exactly.

EV sessions: per socket and day, a Poisson number of sessions placed without overlap inside the class's
hours, at least one free hour apart (the next vehicle shows as "incoming" there). The driver's required
SoC is capped at what the socket can deliver in the session; arrival SoCs are then scaled so that the
energy the vehicles need over the year meets ``ev.annual_demand_kwh`` exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from envs.citylearn.site import CityLearnSite, VehicleClass
from envs.profiles import clear_sky_ghi

HOURS_PER_DAY = 24
SUBSTEPS = 4  # irradiance is averaged over 4 instants per hour
NOCT_RISE_C_PER_W_M2 = 25.0 / 800.0  # cell temperature above air per W/m2 (NOCT 45 C)
SOLAR_CONSTANT_W_M2 = 1367.0
POWER_MARGIN = 0.9  # feasibility assumes 90 % of the socket power, leaving slack for any controller


@dataclass
class Calendar:
    """Per-step calendar columns over ``days`` days (CityLearn conventions)."""

    month: np.ndarray  # 1..12
    hour: np.ndarray  # 1..24 (hour 1 = 00:00-01:00)
    day_type: np.ndarray  # 1..7 Monday..Sunday, 8 holiday
    day_of_year: np.ndarray  # 1..366
    clock_h: np.ndarray  # local clock hour at the start of the step, 0..23
    day_index: np.ndarray  # 0..days-1

    @property
    def n_steps(self) -> int:
        return len(self.hour)


@dataclass
class Session:
    """One EV charging session on one socket: connected during steps [start, end)."""

    socket: int
    start: int
    end: int
    arrival_soc: float
    required_soc: float


def make_calendar(site: CityLearnSite, days: int) -> Calendar:
    """Calendar columns for ``days`` days from January 1st of ``site.calendar.year``."""
    first = dt.date(site.calendar.year, 1, 1)
    dates = [first + dt.timedelta(days=d) for d in range(days)]
    holidays = set(site.calendar.holidays)
    dtype = [8 if d.strftime("%m-%d") in holidays else d.isoweekday() for d in dates]
    rep = lambda values: np.repeat(np.asarray(values, dtype=np.int64), HOURS_PER_DAY)  # noqa: E731
    clock = np.tile(np.arange(HOURS_PER_DAY), days)
    return Calendar(
        month=rep([d.month for d in dates]),
        hour=clock + 1,
        day_type=rep(dtype),
        day_of_year=rep([d.timetuple().tm_yday for d in dates]),
        clock_h=clock,
        day_index=rep(range(days)),
    )


def _ar1(rng: np.random.Generator, n: int, std: float, rho: float) -> np.ndarray:
    """Zero-mean AR(1) series with stationary standard deviation ``std``."""
    eps = rng.normal(0.0, std * np.sqrt(1 - rho**2), n)
    out = np.empty(n)
    acc = rng.normal(0.0, std)
    for i in range(n):
        acc = rho * acc + eps[i]
        out[i] = acc
    return out


def _cos_zenith(lat_deg: float, doy: np.ndarray, solar_hour: np.ndarray) -> np.ndarray:
    decl = np.deg2rad(23.45) * np.sin(2 * np.pi * (284 + doy) / 365.0)
    lat = np.deg2rad(lat_deg)
    return np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(
        np.deg2rad(15.0 * (solar_hour - 12.0))
    )


def weather_and_pv(site: CityLearnSite, cal: Calendar, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Hourly weather and PV output.

    Returns:
        Arrays over ``cal.n_steps``: ``ghi``, ``dhi``, ``dni`` (W/m2), ``temperature_c``, ``humidity_pct``,
        ``pv_w_per_kw`` (AC output per kWp, CityLearn's ``solar_generation`` column).
    """
    loc, pv, w = site.location, site.pv, site.weather
    n, days = cal.n_steps, cal.n_steps // HOURS_PER_DAY
    offsets = (np.arange(SUBSTEPS) + 0.5) / SUBSTEPS
    clock = cal.clock_h[:, None] + offsets[None, :]
    doy = cal.day_of_year[:, None].astype(float)
    b = 2 * np.pi * (doy - 81) / 364.0
    eot_h = (9.87 * np.sin(2 * b) - 7.53 * np.cos(b) - 1.5 * np.sin(b)) / 60.0
    solar_hour = clock + (loc.longitude_deg - 15.0 * loc.utc_offset_h) / 15.0 + eot_h
    clear = clear_sky_ghi(loc.latitude_deg, doy, solar_hour).mean(axis=1)
    cos_z = np.clip(_cos_zenith(loc.latitude_deg, doy, solar_hour), 0.0, None).mean(axis=1)

    mean_k = np.asarray(pv.clearness_mean)[cal.month[::HOURS_PER_DAY] - 1]
    var = np.minimum(pv.clearness_spread**2, 0.9 * mean_k * (1 - mean_k))
    conc = mean_k * (1 - mean_k) / var - 1.0
    k_day = rng.beta(mean_k * conc, (1 - mean_k) * conc)
    k_hour = np.repeat(k_day, HOURS_PER_DAY) * np.exp(_ar1(rng, n, pv.hourly_cloud_std, 0.6))
    ghi = clear * np.clip(k_hour, 0.03, 1.05)

    extra = SOLAR_CONSTANT_W_M2 * (1 + 0.033 * np.cos(2 * np.pi * cal.day_of_year / 365.0)) * cos_z
    kt = np.where(extra > 1.0, np.clip(ghi / np.maximum(extra, 1.0), 0, 1), 0.0)
    diffuse_share = np.where(
        kt <= 0.22,
        1 - 0.09 * kt,
        np.where(kt <= 0.8, 0.9511 - 0.1604 * kt + 4.388 * kt**2 - 16.638 * kt**3 + 12.336 * kt**4, 0.165),
    )
    dhi = ghi * diffuse_share
    dni = np.where(cos_z > 0.05, (ghi - dhi) / np.maximum(cos_z, 0.05), 0.0)

    season = w.seasonal_amplitude_c * np.cos(2 * np.pi * (cal.day_of_year - 288) / 365.0)
    daily = np.sin(2 * np.pi * (cal.clock_h + 0.5 - 9.0) / HOURS_PER_DAY)
    swing = w.daily_amplitude_c * (0.5 + 0.8 * (np.repeat(k_day, HOURS_PER_DAY) - 0.4))
    temp = w.mean_temperature_c + season + swing * daily + _ar1(rng, n, 0.7, 0.9)
    humidity = np.clip(96.0 - 3.0 * (temp - 22.0) + _ar1(rng, n, 3.0, 0.8), 45.0, 100.0)

    cell = temp + NOCT_RISE_C_PER_W_M2 * ghi
    pv_w_per_kw = np.clip(
        ghi * pv.performance_ratio * (1 + pv.temperature_coefficient_per_c * (cell - 25.0)), 0, None
    )
    assert days * HOURS_PER_DAY == n
    return {
        "ghi": ghi,
        "dhi": dhi,
        "dni": dni,
        "temperature_c": temp,
        "humidity_pct": humidity,
        "pv_w_per_kw": pv_w_per_kw,
    }


def is_busy_day(cal: Calendar) -> np.ndarray:
    """Per step: Saturday, Sunday or holiday (more shoppers)."""
    return cal.day_type >= 6


def mall_load(
    site: CityLearnSite, cal: Calendar, temperature_c: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Hourly non-shiftable load (kWh per step) scaled so the first ``site.calendar.days`` days meet
    ``site.load.annual_kwh``."""
    ld = site.load
    h = cal.clock_h
    is_open = (h >= ld.open_hours[0]) & (h < ld.open_hours[1])
    is_staff = (h >= ld.staff_hours[0]) & (h < ld.staff_hours[1]) & ~is_open
    span = ld.open_hours[1] - ld.open_hours[0]
    bump = 1.0 + 0.08 * np.sin(np.pi * np.clip(h + 0.5 - ld.open_hours[0], 0, span) / span)
    activity = np.asarray(ld.monthly_factor)[cal.month - 1] * np.where(
        is_busy_day(cal), ld.weekend_factor, 1.0
    )
    base = np.where(is_open, activity * bump, np.where(is_staff, ld.staff_share, ld.closed_share))
    cooling = ld.cooling_share_per_c * np.clip(temperature_c - ld.cooling_base_c, 0, None)
    shape = (base + np.where(is_open | is_staff, cooling, 0.3 * cooling)) * np.exp(
        _ar1(rng, cal.n_steps, ld.noise_std, 0.8)
    )
    year_steps = site.calendar.days * HOURS_PER_DAY
    return shape * (ld.annual_kwh / shape[:year_steps].sum())


def tariff(site: CityLearnSite, cal: Calendar) -> np.ndarray:
    """Hourly energy price (currency/kWh)."""
    t = site.tariff
    peak = (cal.clock_h >= t.peak_hours[0]) & (cal.clock_h < t.peak_hours[1])
    return np.where(peak, t.peak_per_kwh, t.offpeak_per_kwh).astype(float)


def _place_sessions(
    rng: np.random.Generator, vc: VehicleClass, mean_sessions: float
) -> list[tuple[int, int]]:
    """Non-overlapping (start_hour, dwell) pairs inside one day of ``vc.hours``, one free hour apart."""
    first, last = vc.hours
    window = last - first
    n = int(rng.poisson(mean_sessions))
    dwell = list(rng.integers(vc.dwell_h[0], vc.dwell_h[1] + 1, size=n))
    while dwell and sum(dwell) + len(dwell) - 1 > window:
        dwell.pop()
    if not dwell:
        return []
    slack = window - (sum(dwell) + len(dwell) - 1)
    gaps = (
        np.bincount(rng.integers(0, len(dwell) + 1, size=slack), minlength=len(dwell) + 1)
        if slack
        else np.zeros(len(dwell) + 1, dtype=int)
    )
    out, t = [], first + int(gaps[0])
    for i, d in enumerate(dwell):
        out.append((t, int(d)))
        t += int(d) + 1 + int(gaps[i + 1])
    return out


def _min_arrival_soc(vc: VehicleClass, dwell: np.ndarray, required: np.ndarray) -> np.ndarray:
    """Lowest arrival SoC from which ``required`` is reachable in ``dwell`` hours at POWER_MARGIN of the
    socket power, with CityLearn's default taper above 80 % SoC (bisection on a forward simulation)."""
    lo, hi = np.zeros_like(required), required.copy()
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        soc = mid.copy()
        for k in range(int(dwell.max())):
            taper = np.interp(soc, [0.0, 0.8, 1.0], [1.0, 1.0, 0.2])
            p = np.minimum(
                POWER_MARGIN * vc.socket_power_kw * vc.charger_efficiency, vc.battery_power_kw * taper
            )
            soc = np.where(k < dwell, np.minimum(soc + p / vc.battery_kwh, 1.0), soc)
        ok = soc >= required
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


def ev_sessions(site: CityLearnSite, cal: Calendar, rng: np.random.Generator) -> list[Session]:
    """All charging sessions of all sockets over the calendar, arrival SoCs scaled to the annual demand.

    Raises:
        ValueError: ``ev.annual_demand_kwh`` cannot be met by feasible sessions (more sessions or longer
            dwell times are needed); the message names the field.
    """
    days = cal.n_steps // HOURS_PER_DAY
    busy = is_busy_day(cal)[::HOURS_PER_DAY]
    raw: list[tuple[int, int, int, VehicleClass]] = []  # socket, start step, dwell, class
    for s, vc in enumerate(site.socket_classes):
        for d in range(days):
            mean = vc.sessions_per_socket_day * (site.load.weekend_factor if busy[d] else 1.0)
            raw.extend((s, d * HOURS_PER_DAY + t0, dw, vc) for t0, dw in _place_sessions(rng, vc, mean))
    if not raw:
        return []
    sock = np.array([r[0] for r in raw])
    start = np.array([r[1] for r in raw])
    dwell = np.array([r[2] for r in raw])
    cap = np.array([r[3].battery_kwh for r in raw])
    required = np.empty(len(raw))
    arrival = np.empty(len(raw))
    a_min = np.empty(len(raw))
    for vc in site.ev.classes:
        m = np.array([r[3] is vc for r in raw])
        if not m.any():
            continue
        required[m] = rng.uniform(*vc.required_soc, size=m.sum())
        arrival[m] = rng.uniform(*vc.arrival_soc, size=m.sum())
        a_min[m] = _min_arrival_soc(vc, dwell[m], required[m])
    a_min = np.maximum(a_min, site.ev.min_arrival_soc)
    required = np.maximum(required, a_min)  # a target below the lowest arrival SoC would need no energy
    d_max = (required - a_min) * cap
    d0 = np.clip((required - arrival) * cap, 0.0, d_max)
    year = start < site.calendar.days * HOURS_PER_DAY
    target = site.ev.annual_demand_kwh
    if d0[year].sum() <= 0:
        d0 = d_max.copy()
    if d_max[year].sum() < target:
        raise ValueError(
            f"ev.annual_demand_kwh: {target:.0f} kWh cannot be met; feasible sessions deliver at most "
            f"{d_max[year].sum():.0f} kWh (raise sessions_per_socket_day or dwell_h)"
        )
    lo, hi = 0.0, 1.0
    while np.minimum(hi * d0[year], d_max[year]).sum() < target:
        hi *= 2.0
    for _ in range(100):
        f = 0.5 * (lo + hi)
        lo, hi = (f, hi) if np.minimum(f * d0[year], d_max[year]).sum() < target else (lo, f)
    deficit = np.minimum(hi * d0, d_max)
    arrival = required - deficit / cap
    return [
        Session(int(sock[i]), int(start[i]), int(start[i] + dwell[i]), float(arrival[i]), float(required[i]))
        for i in np.lexsort((start, sock))
    ]


def session_demand_kwh(site: CityLearnSite, sessions: list[Session], start: int, end: int) -> float:
    """Energy the vehicles need (battery side) over sessions starting in steps [start, end)."""
    caps = [site.socket_classes[s.socket].battery_kwh for s in sessions]
    return float(
        sum(
            (s.required_soc - s.arrival_soc) * c
            for s, c in zip(sessions, caps, strict=True)
            if start <= s.start < end
        )
    )
