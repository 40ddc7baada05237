"""The state vector of the export domain, defined once.

Everything that sees the site's state reads this module: the simulator's observations, the offline
pipeline's engineered features, the forward dynamics model, the anomaly detector and the edge runtime.
A bundle's manifest carries :func:`spec_dict`; a runtime refuses a bundle whose spec hash differs.

Two layers:

* **Signals** (:data:`SIGNALS`): what the master controller knows each second, aligned to a 1 s grid.
  They are exactly what the raw logs hold (meter readings, acknowledged Zigbee commands, the
  controller's targets and limits), so the pipeline can rebuild them from logs.
* **Features** (:data:`FEATURES`): the state vector, computed from the signals by one streaming
  kernel, :func:`feature_row`. The env calls it once per step; the pipeline calls
  :func:`features_from_signals` over a whole episode, which loops the same kernel.

A missing meter reading is NaN in the signals; the feature kernel holds the last reading and counts its
age (``meter_age_s``).

Two site constants reach the kernel through its state (:func:`new_kernel_state`), not through the
signals: the site's latitude and longitude, which place the sun (envs/solar.py). With them and the clock
the kernel derives local solar time and the clear-sky irradiance now, over the next hour and over the rest
of the solar day: what a master controller knows of the day's PV before any cloud. The storage headroom
the master can observe is per phase: how long the phase's controllable power has been available without
a break, and the acknowledged energy commanded to it in that time (a tank that has taken a lot is nearly
full; an EV plugged for hours has taken much of its charge).

The weather of the last half hour is two exponentially weighted means with the same 30-minute time
constant, of the PV power and of the clear-sky irradiance: their ratio over the site's PV size is the
clear-sky index of the last half hour, which tells an overcast day from a clear one whatever the PV size
and without the seconds' cloud edges (rllib_configs/pi_residual.py ``outlook_inputs``).

Version history: ``export-state-v1`` (30 features) had the UTC hour and no clear-sky or headroom features;
``export-state-v2`` (39) has solar time, clear-sky irradiance and per-phase headroom (issue 16);
``export-state-v3`` (41) adds the half hour's PV and clear-sky means. A runtime refuses a bundle of another
version (serve/bundle.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from envs.jit import kernel
from envs.solar import DAY_S, day_of_year, ghi_at, solar_seconds

SPEC_VERSION = "export-state-v3"


@dataclass(frozen=True)
class Feature:
    """One named entry of a vector, with its unit and how it is obtained."""

    name: str
    unit: str
    description: str
    low: float = -1e6
    high: float = 1e6


_PHASES = (1, 2, 3)

SIGNALS: tuple[Feature, ...] = (
    *(Feature(f"meter_export_w_l{p}", "W", f"grid meter, export positive, phase {p}; NaN if missing") for p in _PHASES),
    *(Feature(f"meter_pv_w_l{p}", "W", f"PV meter, phase {p}; NaN if missing") for p in _PHASES),
    *(Feature(f"target_w_l{p}", "W", f"controller's target for phase {p}, decided the second before") for p in _PHASES),
    *(Feature(f"acked_w_l{p}", "W", f"sum over slaves on phase {p} of their last acknowledged command") for p in _PHASES),
    *(Feature(f"available_w_l{p}", "W", f"controllable power available on phase {p} (slave status)") for p in _PHASES),
    Feature("setpoint_w", "W", "export setpoint of the site"),
    Feature("time_s", "s", "UTC Unix time of the second", -1e12, 1e12),
)
SIG = {f.name: i for i, f in enumerate(SIGNALS)}
N_SIGNALS = len(SIGNALS)

FEATURES: tuple[Feature, ...] = (
    *(Feature(f"export_w_l{p}", "W", f"last valid grid meter reading, phase {p} (export positive)") for p in _PHASES),
    Feature("export_w", "W", "sum of export_w_l1..l3 (net export; negative = import)"),
    *(Feature(f"pv_w_l{p}", "W", f"last valid PV meter reading, phase {p}") for p in _PHASES),
    Feature("pv_w", "W", "sum of pv_w_l1..l3"),
    Feature("meter_age_s", "s", "seconds since the last valid meter reading (0 = fresh)", 0.0, 1e6),
    Feature("export_w_mean_10s", "W", "mean of export_w over the last 10 s (fewer at episode start)"),
    Feature("export_w_mean_60s", "W", "mean of export_w over the last 60 s (fewer at episode start)"),
    Feature("export_w_delta_1s", "W", "export_w minus its value 1 s before (0 at episode start)"),
    Feature("export_w_delta_5s", "W", "export_w minus its value 5 s before (or at episode start)"),
    Feature("pv_w_delta_5s", "W", "pv_w minus its value 5 s before: cloud ramps"),
    *(Feature(f"target_w_l{p}", "W", f"previous per-phase target, phase {p}") for p in _PHASES),
    *(Feature(f"acked_w_l{p}", "W", f"acknowledged command sum, phase {p}") for p in _PHASES),
    *(Feature(f"available_w_l{p}", "W", f"available controllable power, phase {p}") for p in _PHASES),
    Feature("setpoint_w", "W", "export setpoint"),
    Feature("export_error_w", "W", "export_w - setpoint_w (positive: exporting too much)"),
    Feature("phase_imbalance_w", "W", "standard deviation of export_w_l1..l3 across phases", 0.0, 1e6),
    Feature("solar_time_sin", "1", "sin(2 pi * local solar second of day / 86400); solar noon = 0", -1.0, 1.0),
    Feature("solar_time_cos", "1", "cos(2 pi * local solar second of day / 86400); solar noon = -1", -1.0, 1.0),
    Feature("doy_sin", "1", "sin(2 pi * (solar day of year - 1) / 365)", -1.0, 1.0),
    Feature("doy_cos", "1", "cos(2 pi * (solar day of year - 1) / 365)", -1.0, 1.0),
    Feature("clear_sky_w_m2", "W/m2", "clear-sky irradiance now (at the start of the minute)", 0.0, 1200.0),
    Feature("clear_sky_next_1h_w_m2", "W/m2", "mean clear-sky irradiance over the next hour", 0.0, 1200.0),
    Feature("clear_sky_rest_kwh_m2", "kWh/m2", "clear-sky irradiation left in the solar day", 0.0, 20.0),
    *(Feature(f"available_for_s_l{p}", "s", f"seconds phase {p} has had controllable power available without a "
              "break (0 = none available; counted from the episode start)", 0.0, 1e7) for p in _PHASES),
    *(Feature(f"acked_kwh_since_available_l{p}", "kWh", f"acknowledged energy commanded to phase {p} since its "
              "power became available (0 = none available)", 0.0, 1e4) for p in _PHASES),
    Feature("pv_w_ewm_30min", "W", "exponentially weighted mean of pv_w, time constant 30 min (from the "
            "episode start)", 0.0, 1e6),
    Feature("clear_sky_ewm_30min_w_m2", "W/m2", "exponentially weighted mean of clear_sky_w_m2, time "
            "constant 30 min (from the episode start)", 0.0, 1200.0),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
CLOCK_FEATURES: tuple[str, ...] = (
    "solar_time_sin", "solar_time_cos", "doy_sin", "doy_cos",
    "clear_sky_w_m2", "clear_sky_next_1h_w_m2", "clear_sky_rest_kwh_m2", "clear_sky_ewm_30min_w_m2",
)
"""Features that are functions of the clock and the site's place alone (no control changes them)."""
FEAT = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURES)


def phase_permuted_columns(order: tuple[int, ...]) -> np.ndarray:
    """Feature indices (N_FEATURES,) that read, in place of each per-phase feature of phase k
    (``*_l1``..``*_l3``), the same feature of phase ``order[k]`` (0-based); the other features stay. Indexing
    a state vector with them gives the state of the same site with its phases renamed: what a policy trained
    on one layout reads on a site whose devices sit on other phases (rllib_configs/pi_residual.py
    ``phase_order``)."""
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"phase order must be a permutation of (0, 1, 2), got {tuple(order)}")
    cols = np.arange(len(FEATURES))
    for i, f in enumerate(FEATURES):
        stem, _, phase = f.name.rpartition("_l")
        if stem and phase in ("1", "2", "3"):
            cols[i] = FEAT[f"{stem}_l{order[int(phase) - 1] + 1}"]
    return cols


FEATURE_LOW = np.array([f.low for f in FEATURES], dtype=np.float32)
FEATURE_HIGH = np.array([f.high for f in FEATURES], dtype=np.float32)

# Streaming state of the feature kernel: held readings, meter age, a ring of past export/pv totals.
RING = 64  # >= the longest window (60 s) + 1
KS_HELD = 0  # 6 entries: held export l1..l3, pv l1..l3
KS_AGE = 6
KS_COUNT = 7  # rows seen in this episode
KS_POS = 8  # next write position in the ring
KS_LAT = 9  # site latitude (deg), set by new_kernel_state
KS_LON = 10  # site longitude (deg, east positive)
KS_AVAIL_FOR = 11  # 3 entries: seconds each phase has had power available without a break
KS_KWH = 14  # 3 entries: acknowledged kWh commanded to each phase since then
KS_SKY_MIN = 17  # solar minute of the cached clear-sky values (-1 = none yet)
KS_SKY = 18  # 3 entries: clear-sky now, mean over the next hour, rest of the day
KS_EWM = 21  # 2 entries: the 30-minute means of pv_w and of clear_sky_w_m2
KS_SIZE = 23
EWM_TAU_S = 1800.0
SKY_NEXT_POINTS = 6  # midpoints of 10-min slices of the next hour
SKY_REST_POINTS = 24  # midpoints of equal slices of the rest of the solar day


def new_kernel_state(batch: int, latitude_deg: float, longitude_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Fresh streaming state for ``batch`` episodes of a site at ``latitude_deg``/``longitude_deg``:
    (kstate (B, KS_SIZE), ring (B, 2, RING))."""
    kstate = np.zeros((batch, KS_SIZE))
    kstate[:, KS_LAT] = latitude_deg
    kstate[:, KS_LON] = longitude_deg
    kstate[:, KS_SKY_MIN] = -1.0
    return kstate, np.zeros((batch, 2, RING))


@kernel
def _clear_sky(kstate: np.ndarray, solar: float) -> None:
    """Refresh the cached clear-sky values when the minute of ``solar`` (solar seconds, envs/solar.py)
    changes: they are a function of the minute alone."""
    minute = solar // 60.0
    if minute == kstate[KS_SKY_MIN]:
        return
    kstate[KS_SKY_MIN] = minute
    t0 = minute * 60.0
    day = math.floor(t0 / DAY_S)
    doy = float(day_of_year(int(day)))
    hour = (t0 - day * DAY_S) / 3600.0
    lat = kstate[KS_LAT]
    kstate[KS_SKY] = ghi_at(lat, doy, hour)
    s = 0.0
    for k in range(SKY_NEXT_POINTS):
        s += ghi_at(lat, doy, hour + (k + 0.5) / SKY_NEXT_POINTS)
    kstate[KS_SKY + 1] = s / SKY_NEXT_POINTS
    step = (24.0 - hour) / SKY_REST_POINTS
    s = 0.0
    for k in range(SKY_REST_POINTS):
        s += ghi_at(lat, doy, hour + (k + 0.5) * step)
    kstate[KS_SKY + 2] = s * step / 1000.0


@kernel
def _window_mean(ring: np.ndarray, pos: int, count: int, w: int) -> float:
    n = min(count, w)
    s = 0.0
    for k in range(1, n + 1):
        s += ring[(pos - k) % RING]
    return s / n


@kernel
def feature_row(sig: np.ndarray, kstate: np.ndarray, ring: np.ndarray, out: np.ndarray) -> None:
    """Advance the streaming state by one second of ``sig`` (N_SIGNALS,) and write the features to ``out``.

    ``kstate`` (KS_SIZE,) and ``ring`` (2, RING) are updated in place; start an episode with zeros.
    The first row of an episode should carry a valid meter reading (held values start at 0 otherwise).
    """
    fresh = True
    for j in range(6):
        if math.isnan(sig[j]):
            fresh = False
    if fresh:
        for j in range(6):
            kstate[KS_HELD + j] = sig[j]
        kstate[KS_AGE] = 0.0
    elif kstate[KS_COUNT] > 0:
        kstate[KS_AGE] += 1.0
    e1, e2, e3 = kstate[KS_HELD], kstate[KS_HELD + 1], kstate[KS_HELD + 2]
    p1, p2, p3 = kstate[KS_HELD + 3], kstate[KS_HELD + 4], kstate[KS_HELD + 5]
    export = e1 + e2 + e3
    pv = p1 + p2 + p3
    pos = int(kstate[KS_POS])
    ring[0, pos] = export
    ring[1, pos] = pv
    pos = (pos + 1) % RING
    count = int(kstate[KS_COUNT]) + 1
    kstate[KS_POS] = pos
    kstate[KS_COUNT] = count
    lag1 = min(1, count - 1)
    lag5 = min(5, count - 1)
    mean_e = export / 3.0
    imb = math.sqrt(((e1 - mean_e) ** 2 + (e2 - mean_e) ** 2 + (e3 - mean_e) ** 2) / 3.0)
    setpoint = sig[15]
    tsec = sig[16]
    solar = solar_seconds(tsec, kstate[KS_LON])
    day = math.floor(solar / DAY_S)
    day_frac = (solar - day * DAY_S) / DAY_S
    doy = (day_of_year(int(day)) - 1) / 365.0
    _clear_sky(kstate, solar)
    out[0] = e1
    out[1] = e2
    out[2] = e3
    out[3] = export
    out[4] = p1
    out[5] = p2
    out[6] = p3
    out[7] = pv
    out[8] = kstate[KS_AGE]
    out[9] = _window_mean(ring[0], pos, count, 10)
    out[10] = _window_mean(ring[0], pos, count, 60)
    out[11] = export - ring[0, (pos - 1 - lag1) % RING]
    out[12] = export - ring[0, (pos - 1 - lag5) % RING]
    out[13] = pv - ring[1, (pos - 1 - lag5) % RING]
    for j in range(9):  # target, acked, available: l1..l3 each
        out[14 + j] = sig[6 + j]
    out[23] = setpoint
    out[24] = export - setpoint
    out[25] = imb
    out[26] = math.sin(2.0 * math.pi * day_frac)
    out[27] = math.cos(2.0 * math.pi * day_frac)
    out[28] = math.sin(2.0 * math.pi * doy)
    out[29] = math.cos(2.0 * math.pi * doy)
    out[30] = kstate[KS_SKY]
    out[31] = kstate[KS_SKY + 1]
    out[32] = kstate[KS_SKY + 2]
    for j in range(3):  # headroom: a break in availability (0 W available) restarts both counters
        if sig[12 + j] > 0.0:
            kstate[KS_AVAIL_FOR + j] += 1.0
            kstate[KS_KWH + j] += max(sig[9 + j], 0.0) / 3.6e6
        else:
            kstate[KS_AVAIL_FOR + j] = 0.0
            kstate[KS_KWH + j] = 0.0
        out[33 + j] = kstate[KS_AVAIL_FOR + j]
        out[36 + j] = kstate[KS_KWH + j]
    if count == 1:  # the episode's first second starts the means
        kstate[KS_EWM] = pv
        kstate[KS_EWM + 1] = kstate[KS_SKY]
    else:
        kstate[KS_EWM] += (pv - kstate[KS_EWM]) / EWM_TAU_S
        kstate[KS_EWM + 1] += (kstate[KS_SKY] - kstate[KS_EWM + 1]) / EWM_TAU_S
    out[39] = kstate[KS_EWM]
    out[40] = kstate[KS_EWM + 1]


@kernel
def _features_loop(signals: np.ndarray, kstate: np.ndarray, ring: np.ndarray, out: np.ndarray) -> None:
    for t in range(signals.shape[0]):
        feature_row(signals[t], kstate, ring, out[t])


def features_from_signals(signals: np.ndarray, latitude_deg: float, longitude_deg: float) -> np.ndarray:
    """State vectors (T, N_FEATURES) of one episode from its aligned signals (T, N_SIGNALS), for a site at
    ``latitude_deg``/``longitude_deg``.

    Runs :func:`feature_row` over the rows, from a fresh state: the same code the env runs per step.
    """
    sig = np.ascontiguousarray(signals, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[1] != N_SIGNALS:
        raise ValueError(f"signals must have shape (T, {N_SIGNALS}), got {sig.shape}")
    out = np.empty((sig.shape[0], N_FEATURES))
    kstate, ring = new_kernel_state(1, latitude_deg, longitude_deg)
    _features_loop(sig, kstate[0], ring[0], out)
    return out


def spec_dict() -> dict:
    """The spec as data, for manifests: version, ordered features with units, and its sha256."""
    body = {
        "version": SPEC_VERSION,
        "features": [asdict(f) for f in FEATURES],
        "signals": [asdict(f) for f in SIGNALS],
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {**body, "sha256": digest}


assert N_FEATURES == 41 and N_SIGNALS == 17, "update feature_row's indices with the spec"
assert FEAT["target_w_l1"] == 14 and FEAT["setpoint_w"] == 23 and SIG["setpoint_w"] == 15
