"""Exogenous profiles of one simulated day at 1 s: PV by phase, base load by phase, hot water, EV sessions.

All randomness comes from the ``np.random.Generator`` passed in (the env's ``self.np_random``), so a
seed fixes the day. Times are local clock seconds from midnight.

PV: clear-sky global horizontal irradiance by latitude, day of year and solar time (Haurwitz model,
envs/solar.py) times a cloud
transmission process. Broken clouds are a two-state (sun / shade) renewal process with exponential
durations; cloud edges pass in a few seconds, so PV ramps by tens of percent within seconds, with a
short overshoot at cloud edges (cloud enhancement). These ramps are what cause export spikes.

Base load: an always-on part shaped over the day (night trough, morning and evening peaks) with slow
noise, plus Poisson appliance events: kettle, oven (thermostat cycling), microwave, motor starts with an
inrush spike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.site import N_PHASES, Site
from envs.solar import clear_sky_ghi

DAY_S = 86_400
PV_DERATE = 0.86


@dataclass(frozen=True)
class Scenario:
    """Weather of a day type."""

    day_of_year: int
    sun_mean_s: float  # mean duration of sunny spells (s); 0 = no clouds
    shade_mean_s: float  # mean duration of shaded spells (s)
    opacity: tuple[float, float]  # range of a cloud's opacity (share of irradiance removed)
    base_transmission: float = 1.0  # transmission outside clouds (overcast: low)


SCENARIOS: dict[str, Scenario] = {
    "clear": Scenario(day_of_year=120, sun_mean_s=0.0, shade_mean_s=0.0, opacity=(0.0, 0.0)),
    "broken_clouds": Scenario(day_of_year=150, sun_mean_s=150.0, shade_mean_s=70.0, opacity=(0.45, 0.8)),
    "overcast": Scenario(
        day_of_year=150, sun_mean_s=40.0, shade_mean_s=900.0, opacity=(0.2, 0.5), base_transmission=0.45
    ),
    "summer": Scenario(day_of_year=190, sun_mean_s=700.0, shade_mean_s=50.0, opacity=(0.4, 0.75)),
    "winter": Scenario(day_of_year=10, sun_mean_s=240.0, shade_mean_s=150.0, opacity=(0.5, 0.85)),
}


@dataclass
class DayProfile:
    """One day of exogenous inputs at 1 s resolution (DAY_S + 1 rows: the last is next midnight)."""

    scenario: str
    day_of_year: int
    pv_w: np.ndarray  # (DAY_S + 1, 3)
    base_w: np.ndarray  # (DAY_S + 1, 3)
    slave_available: np.ndarray  # (DAY_S + 1, S): EV plugged (1/0); 1 for other kinds
    slave_draw_w: np.ndarray  # (DAY_S + 1, S): hot water drawn from a water heater's tank (W)
    ev_energy_kwh: np.ndarray  # (S,): energy each EV wants at arrival (0 for other kinds)


def moving_average(x: np.ndarray, w: int) -> np.ndarray:
    """Centred moving average of ``x`` along axis 0 over ``w`` samples (shorter at the ends), O(n)."""
    c = np.cumsum(np.concatenate([np.zeros((1, *x.shape[1:])), x]), axis=0)
    n = x.shape[0]
    lo = np.clip(np.arange(n) - w // 2, 0, n)
    hi = np.clip(np.arange(n) + w - w // 2, 0, n)
    width = (hi - lo).reshape(-1, *([1] * (x.ndim - 1)))
    return (c[hi] - c[lo]) / width


def cloud_transmission(rng: np.random.Generator, sc: Scenario, n: int) -> np.ndarray:
    """Transmission factor (n,) of the cloud process: 1 in sun, 1 - opacity in shade, smooth edges."""
    k = np.full(n, sc.base_transmission)
    if sc.sun_mean_s > 0:
        t, shaded = 0, bool(rng.random() < sc.shade_mean_s / (sc.sun_mean_s + sc.shade_mean_s))
        while t < n:
            dur = int(rng.exponential(sc.shade_mean_s if shaded else sc.sun_mean_s)) + 5
            if shaded:
                k[t : t + dur] = sc.base_transmission * (1.0 - rng.uniform(*sc.opacity))
            elif sc.base_transmission < 1.0:  # a break in an overcast sky
                k[t : t + dur] = rng.uniform(0.8, 1.0)
            t += dur
            shaded = not shaded
        edge = int(rng.integers(3, 9))  # a cloud edge passes in 3..8 s
        k = np.convolve(np.pad(k, (edge, edge), mode="edge"), np.ones(edge) / edge, mode="same")[edge:-edge]
        # Cloud enhancement: a short overshoot where the sun comes out.
        rising = np.clip(np.diff(k, prepend=k[0]), 0.0, None)
        k = k + 6.0 * np.convolve(rising, np.exp(-np.arange(30) / 8.0) / 8.0, mode="full")[:n]
    noise = np.cumsum(rng.normal(0.0, 0.002, n))
    noise -= moving_average(noise, 601)
    return np.clip(k + noise, 0.05, 1.3)


def _daily_shape(hours: np.ndarray) -> np.ndarray:
    """Relative always-on load over the day: night trough, morning and evening peaks (mean ~1)."""
    morning = 0.5 * np.exp(-0.5 * ((hours - 7.5) / 1.0) ** 2)
    evening = 0.8 * np.exp(-0.5 * ((hours - 19.5) / 1.5) ** 2)
    day = 0.15 * ((hours > 8) & (hours < 18))
    return 0.75 + morning + evening + day


# Appliance events: (name, power W, duration range s, relative frequency, duty cycle period s or 0)
APPLIANCES = (
    ("kettle", 2000.0, (100, 240), 0.35, 0),
    ("microwave", 1100.0, (60, 300), 0.2, 0),
    ("oven", 2200.0, (1500, 3600), 0.1, 150),
    ("motor", 450.0, (300, 1500), 0.35, 0),
)
MOTOR_INRUSH_W = 2400.0


def base_load(rng: np.random.Generator, site: Site, n: int) -> np.ndarray:
    """Base load per phase (n, 3) in W: shaped always-on load with slow noise plus appliance events."""
    hours = np.arange(n) / 3600.0
    shape = _daily_shape(hours)
    mean = np.asarray(site.base_load.mean_w)
    slow = np.cumsum(rng.normal(0.0, 3.0, (n, N_PHASES)), axis=0)
    slow -= moving_average(slow, 1201)
    load = mean[None, :] * shape[:, None] + slow
    n_events = rng.poisson(site.base_load.events_per_day * n / DAY_S)
    weights = np.array([a[3] for a in APPLIANCES])
    kinds = rng.choice(len(APPLIANCES), size=n_events, p=weights / weights.sum())
    # Event start times follow the daily shape (more in the morning and evening, few at night).
    start_p = np.clip(shape - 0.7, 0.02, None)
    starts = rng.choice(n, size=n_events, p=start_p / start_p.sum())
    phases = rng.integers(0, N_PHASES, size=n_events)
    for kind, start, ph in zip(kinds, starts, phases):
        _, power, (dmin, dmax), _, period = APPLIANCES[kind]
        dur = int(rng.integers(dmin, dmax + 1))
        seg = np.full(min(dur, n - start), power)
        if period:  # thermostat cycling
            on = (np.arange(seg.size) % period) < int(0.6 * period)
            seg = seg * on
        if APPLIANCES[kind][0] == "motor":
            seg[: int(rng.integers(1, 4))] = MOTOR_INRUSH_W
        load[start : start + seg.size, ph] += seg
    return np.clip(load, 0.0, None)


def day_profile(
    rng: np.random.Generator, site: Site, scenario: str, day_of_year: int | None = None
) -> DayProfile:
    """Generate one day of exogenous inputs for ``site`` under ``scenario``.

    Args:
        rng: The only source of randomness.
        site: The site description.
        scenario: A key of :data:`SCENARIOS`.
        day_of_year: Simulate this calendar day (1..365) instead of one drawn near the scenario's day
            (the draw still happens, so the rest of the random stream is unchanged).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    sc = SCENARIOS[scenario]
    n = DAY_S + 1
    doy = int(np.clip(sc.day_of_year + rng.integers(-10, 11), 1, 365))
    if day_of_year is not None:
        doy = day_of_year
    solar_hour = np.arange(n) / 3600.0 - site.timezone_offset_h + site.longitude_deg / 15.0  # local clock -> solar
    ghi = clear_sky_ghi(site.latitude_deg, doy, solar_hour) * cloud_transmission(rng, sc, n)
    pv = np.zeros((n, N_PHASES))
    for arr in site.pv:
        per_phase = arr.kwp * 1000.0 * PV_DERATE * ghi / 1000.0 / len(arr.phases)
        for p in arr.phases:
            pv[:, p - 1] += per_phase
    base = base_load(rng, site, n)
    n_slaves = len(site.slaves)
    available = np.ones((n, n_slaves))
    draw = np.zeros((n, n_slaves))
    ev_energy = np.zeros(n_slaves)
    for s, sl in enumerate(site.slaves):
        if sl.kind == "ev_charger":
            arrive = int(rng.uniform(*sl.arrive_h) * 3600)
            depart = int(rng.uniform(*sl.depart_h) * 3600)
            available[:, s] = 0.0
            available[arrive:depart, s] = 1.0
            ev_energy[s] = rng.uniform(*sl.energy_kwh)
        elif sl.kind == "heat_pump" and sl.tank_kwh > 0:
            # Space heating: demand follows the outdoor temperature, higher at night and in the morning.
            hours = np.arange(n) / 3600.0
            shape = 1.0 + 0.4 * np.cos(2 * np.pi * (hours - 5.0) / 24.0)
            draw[:, s] = sl.draw_kwh_per_day * 3.6e6 / DAY_S * shape / shape.mean()
        elif sl.kind == "water_heater" and sl.draw_kwh_per_day > 0:
            # Two showers (morning, evening) take 70 % of the draw; small draws take the rest.
            for centre, share in ((7.0, 0.35), (20.0, 0.35)):
                start = int((centre + rng.normal(0, 0.5)) * 3600)
                dur = int(rng.integers(480, 900))
                draw[start : start + dur, s] += share * sl.draw_kwh_per_day * 3.6e6 / dur
            for start in rng.integers(6 * 3600, 22 * 3600, size=8):
                draw[start : start + 60, s] += 0.3 / 8 * sl.draw_kwh_per_day * 3.6e6 / 60
    return DayProfile(scenario, doy, pv, base, available, draw, ev_energy)
