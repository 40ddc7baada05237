"""Write a CityLearn 3.0.2 schema (``schema.json`` plus CSV time series) for a :class:`CityLearnSite`.

The schema is data: one building with PV and a battery (both ``autosize: false``, so nothing is
downloaded), one CityLearn charger per socket, one vehicle per socket, and the weather, price and carbon
series. The profiles come from :mod:`envs.citylearn.profiles`; the whole year is generated and the
requested days are sliced out, so a few-day schema is exactly the start of the year-long one.

Layout of ``out_dir``::

    schema.json            CityLearn schema (load with CityLearnEnv(str(out_dir / "schema.json")))
    <building>.csv         calendar, non-shiftable load (kWh), PV output (W per kWp)
    weather.csv            temperature, humidity, diffuse and direct irradiance, with forecasts
    pricing.csv            price (currency/kWh), with forecasts
    carbon_intensity.csv   grid CO2 (kg/kWh)
    chargers/<socket>.csv  EV sessions per socket (CityLearn's charger-centric format)
    summary.json           the figures of what was written (annual load, PV, EV demand, sessions ...)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from envs.citylearn import profiles
from envs.citylearn.prepare import CHARGER_COLUMNS as REQUIRED_CHARGER_COLUMNS
from envs.citylearn.site import CityLearnSite

REWARD_CLASS = "envs.citylearn.reward.MultiObjectiveReward"

# Observations the mall schema turns on. Carbon intensity is constant and humidity does not drive anything,
# so both stay off; for the chargers, capacity and arrival time carry no information here (one vehicle
# class per socket, arrivals announced one hour ahead), so they stay off too.
SHARED_ACTIVE = [
    "month", "day_type", "hour",
    "outdoor_dry_bulb_temperature", *[f"outdoor_dry_bulb_temperature_predicted_{i}" for i in (1, 2, 3)],
    "diffuse_solar_irradiance", *[f"diffuse_solar_irradiance_predicted_{i}" for i in (1, 2, 3)],
    "direct_solar_irradiance", *[f"direct_solar_irradiance_predicted_{i}" for i in (1, 2, 3)],
    "electricity_pricing", *[f"electricity_pricing_predicted_{i}" for i in (1, 2, 3)],
]  # fmt: skip
SHARED_INACTIVE = [
    "daylight_savings_status", "carbon_intensity", "outdoor_relative_humidity",
    *[f"outdoor_relative_humidity_predicted_{i}" for i in (1, 2, 3)],
]  # fmt: skip
BUILDING_ACTIVE = [
    "non_shiftable_load",
    "solar_generation",
    "electrical_storage_soc",
    "net_electricity_consumption",
]
BUILDING_INACTIVE = [
    "indoor_dry_bulb_temperature", "average_unmet_cooling_setpoint_difference", "indoor_relative_humidity",
    "cooling_storage_soc", "heating_storage_soc", "dhw_storage_soc", "power_outage",
]  # fmt: skip
CHARGER_ACTIVE = [
    "electric_vehicle_charger_connected_state",
    "connected_electric_vehicle_at_charger_departure_time",
    "connected_electric_vehicle_at_charger_required_soc_departure",
    "connected_electric_vehicle_at_charger_soc",
    "electric_vehicle_charger_incoming_state",
]
CHARGER_INACTIVE = [
    "connected_electric_vehicle_at_charger_battery_capacity",
    "incoming_electric_vehicle_at_charger_estimated_arrival_time",
]
CHARGER_COLUMNS = [*REQUIRED_CHARGER_COLUMNS, "electric_vehicle_session_id", "electric_vehicle_current_soc"]
"""A charger file's columns: those CityLearn requires (envs/citylearn/prepare.py checks them), then ours."""


@dataclass(frozen=True)
class SchemaBuild:
    """What :func:`build_schema` wrote."""

    schema_path: Path
    summary: dict[str, Any]


def vehicle_id(site: CityLearnSite, socket: int) -> str:
    """The vehicle that uses socket ``socket`` (one vehicle identity per socket)."""
    return f"EV_{site.socket_classes[socket].name}_{socket + 1:03d}"


def _observations() -> dict[str, dict[str, bool]]:
    obs: dict[str, dict[str, bool]] = {}
    for names, active, shared in (
        (SHARED_ACTIVE, True, True),
        (SHARED_INACTIVE, False, True),
        (BUILDING_ACTIVE, True, False),
        (BUILDING_INACTIVE, False, False),
        (CHARGER_ACTIVE, True, True),
        (CHARGER_INACTIVE, False, True),
    ):
        obs.update({n: {"active": active, "shared_in_central_agent": shared} for n in names})
    return obs


def _ahead(x: np.ndarray, h: int, n0: int, n: int) -> np.ndarray:
    """``x`` shifted ``h`` steps ahead, over the slice [n0, n0 + n) (x covers one day more than needed)."""
    return x[n0 + h : n0 + h + n]


def _charger_frame(
    site: CityLearnSite, socket: int, sessions: list[profiles.Session], n0: int, n: int
) -> pd.DataFrame:
    """One socket's charger CSV over steps [n0, n0 + n)."""
    state = np.full(n, 3, dtype=np.int64)
    ev = np.full(n, "", dtype=object)
    session_id = np.full(n, "", dtype=object)
    departure = np.full(n, np.nan)
    required = np.full(n, np.nan)
    arrival_in = np.full(n, np.nan)
    soc_arrival = np.full(n, np.nan)
    current = np.full(n, np.nan)
    name = vehicle_id(site, socket)
    for k, s in enumerate(sessions):
        a, b = s.start - n0, s.end - n0
        if b <= 0 or a >= n:
            continue
        idx = np.arange(max(a, 0), min(b, n))
        state[idx], ev[idx], session_id[idx] = 1, name, f"{name}_s{k:05d}"
        departure[idx] = b - 1 - idx
        required[idx] = s.required_soc
        if 0 <= a < n:
            current[a] = soc_arrival[a] = s.arrival_soc
        if 1 <= a <= n and state[a - 1] == 3:
            state[a - 1], ev[a - 1] = 2, name
            arrival_in[a - 1], soc_arrival[a - 1] = 1, s.arrival_soc
    return pd.DataFrame(
        dict(
            zip(
                CHARGER_COLUMNS,
                (state, ev, departure, required, arrival_in, soc_arrival, session_id, current),
                strict=True,
            )
        )
    )


def _vehicle_defs(site: CityLearnSite, first_soc: dict[int, float]) -> dict[str, Any]:
    defs = {}
    for s, vc in enumerate(site.socket_classes):
        defs[vehicle_id(site, s)] = {
            "include": True,
            "battery": {
                "type": "citylearn.energy_model.Battery",
                "autosize": False,
                "attributes": {
                    "capacity": vc.battery_kwh,
                    "nominal_power": vc.battery_power_kw,
                    "initial_soc": round(first_soc.get(s, 0.5), 6),
                    "depth_of_discharge": 0.9,
                    "capacity_loss_coefficient": 0.0,
                    # Only the charger's efficiency applies between socket and battery.
                    "power_efficiency_curve": [[0.0, 1.0], [1.0, 1.0]],
                },
            },
        }
    return defs


def _building(site: CityLearnSite) -> dict[str, Any]:
    b = site.battery
    chargers = {}
    for cid, vc in zip(site.socket_ids, site.socket_classes, strict=True):
        chargers[cid] = {
            "type": "citylearn.electric_vehicle_charger.Charger",
            "charger_simulation": f"chargers/{cid}.csv",
            "autosize": False,
            "attributes": {
                "nominal_power": vc.socket_power_kw,
                "efficiency": vc.charger_efficiency,
                "charger_type": 0,
                "max_charging_power": vc.socket_power_kw,
                "min_charging_power": vc.min_socket_power_kw,
                "max_discharging_power": 0.0,
                "min_discharging_power": 0.0,
            },
        }
    return {
        "include": True,
        "energy_simulation": f"{site.name}.csv",
        "weather": "weather.csv",
        "carbon_intensity": "carbon_intensity.csv",
        "pricing": "pricing.csv",
        "inactive_observations": [],
        "inactive_actions": [],
        "electrical_storage": {
            "type": "citylearn.energy_model.Battery",
            "autosize": False,
            "attributes": {
                "capacity": b.capacity_kwh,
                "nominal_power": b.power_kw,
                "efficiency": b.efficiency,
                "initial_soc": b.initial_soc,
                "depth_of_discharge": b.depth_of_discharge,
                "capacity_loss_coefficient": b.capacity_loss_coefficient,
                "loss_coefficient": 0.0,
                "power_efficiency_curve": [[0.0, b.efficiency], [1.0, b.efficiency]],
            },
        },
        "pv": {
            "type": "citylearn.energy_model.PV",
            "autosize": False,
            "attributes": {"nominal_power": site.pv.kwp},
        },
        "chargers": chargers,
    }


def _reward_scales(site: CityLearnSite, load: np.ndarray, price: np.ndarray) -> dict[str, float]:
    """The reward's scales from the whole year (so a few-day schema rewards exactly like the year's)."""
    year = slice(0, site.calendar.days * profiles.HOURS_PER_DAY)
    sockets_kwh = sum(c.socket_power_kw * c.sockets for c in site.ev.classes)  # one hourly step
    return {
        "energy_scale_kwh": round(float(load[year].max()) + sockets_kwh, 3),
        "ev_energy_scale_kwh": round(max(sockets_kwh, 1e-3), 3),
        "price_scale": float(price[year].max()),
        "carbon_scale": max(site.grid.carbon_intensity_kg_per_kwh, 1e-6),
    }


def build_schema(
    site: CityLearnSite, out_dir: str | Path, days: int | None = None, start_day: int = 0, seed: int = 0
) -> SchemaBuild:
    """Generate the profiles of ``site`` and write a CityLearn schema for days [start_day, start_day + days).

    Args:
        site: The site.
        out_dir: Output folder (created; existing files of the same names are overwritten).
        days: Days to write; None writes ``site.calendar.days`` (365 days: 8,760 hourly steps).
        start_day: First day written, 0 = January 1st.
        seed: Seeds the ``np.random.Generator`` of every profile, and CityLearn's ``random_seed``.

    Returns:
        The schema path and a summary of the figures written.

    Raises:
        ValueError: ``days`` or ``start_day`` outside the calendar, or an EV demand that cannot be met.
    """
    year_days = site.calendar.days
    days = year_days if days is None else days
    if days < 1 or start_day < 0 or start_day + days > year_days:
        raise ValueError(
            f"days: need 1 <= days and start_day + days <= {year_days}, got {start_day} + {days}"
        )
    rng = np.random.default_rng(seed)
    cal = profiles.make_calendar(site, year_days + 1)
    wx = profiles.weather_and_pv(site, cal, rng)
    load = profiles.mall_load(site, cal, wx["temperature_c"], rng)
    price = profiles.tariff(site, cal)
    sessions = profiles.ev_sessions(site, cal, rng)

    out = Path(out_dir)
    (out / "chargers").mkdir(parents=True, exist_ok=True)
    n0, n = start_day * profiles.HOURS_PER_DAY, days * profiles.HOURS_PER_DAY
    sl = slice(n0, n0 + n)
    hz = site.weather.forecast_horizons_h
    pd.DataFrame({
        "month": cal.month[sl], "hour": cal.hour[sl], "day_type": cal.day_type[sl],
        "daylight_savings_status": 0, "indoor_dry_bulb_temperature": np.nan,
        "average_unmet_cooling_setpoint_difference": np.nan, "indoor_relative_humidity": np.nan,
        "non_shiftable_load": load[sl], "dhw_demand": 0.0, "cooling_demand": 0.0, "heating_demand": 0.0,
        "solar_generation": wx["pv_w_per_kw"][sl],
    }).to_csv(out / f"{site.name}.csv", index=False, float_format="%.6g")  # fmt: skip
    weather = {}
    for key, col in (
        ("temperature_c", "outdoor_dry_bulb_temperature"),
        ("humidity_pct", "outdoor_relative_humidity"),
        ("dhi", "diffuse_solar_irradiance"),
        ("dni", "direct_solar_irradiance"),
    ):
        weather[col] = wx[key][sl]
        for i, h in enumerate(hz, start=1):
            weather[f"{col}_predicted_{i}"] = _ahead(wx[key], h, n0, n)
    pd.DataFrame(weather).to_csv(out / "weather.csv", index=False, float_format="%.6g")
    pricing = {"electricity_pricing": price[sl]}
    pricing.update(
        {f"electricity_pricing_predicted_{i}": _ahead(price, h, n0, n) for i, h in enumerate(hz, 1)}
    )
    pd.DataFrame(pricing).to_csv(out / "pricing.csv", index=False, float_format="%.6g")
    ci = site.grid.carbon_intensity_kg_per_kwh
    pd.DataFrame({"carbon_intensity": np.full(n, ci)}).to_csv(out / "carbon_intensity.csv", index=False)

    by_socket: dict[int, list[profiles.Session]] = {}
    for s in sessions:
        by_socket.setdefault(s.socket, []).append(s)
    first_soc: dict[int, float] = {}
    for socket, cid in enumerate(site.socket_ids):
        own = by_socket.get(socket, [])
        inside = [s for s in own if n0 <= s.start < n0 + n]
        if inside:
            first_soc[socket] = inside[0].arrival_soc
        _charger_frame(site, socket, own, n0, n).to_csv(
            out / "chargers" / f"{cid}.csv", index=False, float_format="%.6g"
        )

    start_date = dt.date(site.calendar.year, 1, 1) + dt.timedelta(days=start_day)
    schema = {
        "random_seed": seed,
        "root_directory": None,
        "central_agent": True,
        "simulation_start_time_step": 0,
        "simulation_end_time_step": n - 1,
        "episode_time_steps": None,
        "rolling_episode_split": False,
        "random_episode_split": False,
        "seconds_per_time_step": 3600,
        "start_date": start_date.isoformat(),
        "observations": _observations(),
        "actions": {
            "cooling_storage": {"active": False},
            "heating_storage": {"active": False},
            "dhw_storage": {"active": False},
            "electrical_storage": {"active": True},
            "electric_vehicle_storage": {"active": True},
        },
        "agent": {"type": "citylearn.agents.base.BaselineAgent", "attributes": {}},
        "reward_function": {"type": REWARD_CLASS, "attributes": _reward_scales(site, load, price)},
        "electric_vehicles_def": _vehicle_defs(site, first_soc),
        "buildings": {site.name: _building(site)},
    }
    schema_path = out / "schema.json"
    schema_path.write_text(json.dumps(schema, indent=2))

    pv_kwh = wx["pv_w_per_kw"][sl].sum() * site.pv.kwp / 1000.0
    summary = {
        "site": site.name,
        "seed": seed,
        "start_date": start_date.isoformat(),
        "days": days,
        "time_steps": n,
        "pv_kwp": site.pv.kwp,
        "pv_generation_kwh": round(float(pv_kwh), 1),
        "pv_specific_yield_kwh_per_kwp": round(float(pv_kwh / max(site.pv.kwp, 1e-9)), 1),
        "battery_capacity_kwh": site.battery.capacity_kwh,
        "battery_power_kw": site.battery.power_kw,
        "mall_load_kwh": round(float(load[sl].sum()), 1),
        "mall_peak_kw": round(float(load[sl].max()), 1),
        "ev_demand_kwh": round(profiles.session_demand_kwh(site, sessions, n0, n0 + n), 1),
        "ev_sessions": sum(1 for s in sessions if n0 <= s.start < n0 + n),
        "chargers": site.ev.chargers,
        "sockets": len(site.socket_ids),
        "sockets_by_class": {c.name: c.sockets for c in site.ev.classes},
        "carbon_intensity_kg_per_kwh": ci,
        "net_export_hours": int(((load[sl] - wx["pv_w_per_kw"][sl] * site.pv.kwp / 1000.0) < 0).sum()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return SchemaBuild(schema_path=schema_path, summary=summary)
