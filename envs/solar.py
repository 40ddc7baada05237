"""The sun, once: clear-sky irradiance (Haurwitz), local solar time and day of year from a Unix time.

The simulator's PV (envs/profiles.py, envs/citylearn/profiles.py) and the state vector's clock and clear-sky
features (envs/state_spec.py) read the same functions, so a policy's idea of "the sun is up" and the
simulated sun agree. Scalar kernels (compiled with numba where available, envs/jit.py) for the streaming
feature kernel; :func:`clear_sky_ghi` maps the scalar one over arrays.

Solar time is ``UTC + longitude / 15`` hours (mean solar time; the equation of time, within +-16 min, is
left out, as in the PV model).
"""

from __future__ import annotations

import math

import numpy as np

from envs.jit import kernel

DAY_S = 86400


@kernel
def ghi_at(latitude_deg: float, day_of_year: float, solar_hour: float) -> float:
    """Clear-sky global horizontal irradiance (W/m2) by the Haurwitz model; 0 with the sun below 0.6 deg."""
    decl = math.radians(23.45) * math.sin(2.0 * math.pi * (284.0 + day_of_year) / 365.0)
    lat = math.radians(latitude_deg)
    hour_angle = math.radians(15.0 * (solar_hour - 12.0))
    cos_z = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle)
    if cos_z <= 0.01:
        return 0.0
    return 1098.0 * cos_z * math.exp(-0.057 / cos_z)


@kernel
def _ghi_loop(lat: float, doy: np.ndarray, hour: np.ndarray, out: np.ndarray) -> None:
    for i in range(hour.shape[0]):
        out[i] = ghi_at(lat, doy[i], hour[i])


def clear_sky_ghi(latitude_deg: float, day_of_year, solar_hour) -> np.ndarray:
    """:func:`ghi_at` over arrays: ``day_of_year`` and ``solar_hour`` broadcast together."""
    doy, hour = np.broadcast_arrays(np.asarray(day_of_year, np.float64), np.asarray(solar_hour, np.float64))
    out = np.empty(hour.size)
    _ghi_loop(float(latitude_deg), np.array(doy).ravel(), np.array(hour).ravel(), out)
    return out.reshape(hour.shape)


@kernel
def day_of_year(days_since_epoch: int) -> int:
    """Day of year (1..366) of the civil day ``days_since_epoch`` after 1970-01-01 (proleptic Gregorian)."""
    z = days_since_epoch + 719468  # H. Hinnant's civil_from_days
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy_mar = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of the year that starts on 1 March
    mp = (5 * doy_mar + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    leap = 1 if (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else 0
    if doy_mar >= 306:  # January or February
        return doy_mar - 306 + 1
    return doy_mar + 59 + leap + 1


@kernel
def solar_seconds(unix_s: float, longitude_deg: float) -> float:
    """Unix time shifted to local mean solar time: its day is the solar day, its hour the solar hour."""
    return unix_s + longitude_deg * 240.0  # 15 deg per hour = 240 s per deg
