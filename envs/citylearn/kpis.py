"""KPIs of a finished CityLearn episode: CityLearn's own (``evaluate_v2`` and ``evaluate``), energy totals
from the simulated series, and the seed's CO2 accounting.

Energy series are summed over buildings (the district) over the steps actually simulated. Names end with
their unit: ``_kwh``, ``_kw``, ``_kg``, ``_ratio`` (0..1, or a ratio to CityLearn's no-battery baseline
where the name says ``_to_baseline``); ``cost_total`` is in the tariff's currency.

The seed's CO2 accounting, with ``f`` = ``co2_factor_kg_per_kwh`` (0.4521 by default)::

    co2_emitted_kg            = grid import x f
    co2_indirect_reduction_kg = (PV used on site + battery discharge) x f
    co2_direct_reduction_kg   = energy delivered by the EV chargers x ev_factor (2.146 kg/kWh)

"PV used on site" is generation minus export (never below 0). Battery discharge can hold PV stored
earlier, so the indirect reduction counts that energy twice, as the seed did; both parts are reported
separately (``co2_indirect_solar_kg``, ``co2_indirect_battery_kg``) so the double count is visible.

Limit violations (:func:`limit_violations`), counted in steps over the simulated series, each a check that
fails on a series that breaks it (tests/test_citylearn_domain.py): ``violations_battery_soc`` (SoC outside
[1 - depth of discharge, 1]), ``violations_battery_power`` (grid-side energy above the nominal power),
``violations_charger_power`` (above the charging or V2G limit), ``violations_charger_no_vehicle`` (energy
through a socket with no vehicle plugged), ``violations_ev_soc`` (a vehicle's SoC outside [0, 1]), and
``limit_violations``, their sum. EV shortfall at departure in kWh (``ev_departure_shortfall_kwh``) is the
energy the reward's constraint prices.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CO2_FACTOR_KG_PER_KWH = 0.4521
EV_AVOIDED_KG_PER_KWH = 2.146

_SHAPE = "district_energy_grid_shape_quality_"
# CityLearn evaluate_v2 district KPIs kept, under our names.
V2_KPIS = {
    "cost_total": "district_cost_total_control_eur",
    "carbon_emissions_kg": "district_emissions_total_control_kgco2",
    "ev_departure_success_ratio": "district_ev_performance_departure_success_ratio",
    "ev_departure_within_tolerance_ratio": "district_ev_performance_departure_within_tolerance_ratio",
    "ev_departure_soc_deficit_mean_ratio": "district_ev_performance_departure_soc_deficit_mean_ratio",
    "ev_departure_count": "district_ev_events_departure_count",
    "solar_self_consumption_ratio": "district_solar_self_consumption_ratio_self_consumption_ratio",
    "cost_to_baseline_ratio": "district_cost_ratio_to_baseline_total_ratio",
    "emissions_to_baseline_ratio": "district_emissions_ratio_to_baseline_total_ratio",
    "peak_daily_average_to_baseline_ratio": _SHAPE + "peak_daily_average_to_baseline_ratio",
    "peak_all_time_to_baseline_ratio": _SHAPE + "peak_all_time_average_to_baseline_ratio",
    "ramping_average_to_baseline_ratio": _SHAPE + "ramping_average_to_baseline_ratio",
}
# CityLearn legacy evaluate() district KPIs (ratios to its no-battery baseline).
LEGACY_KPIS = (
    "cost_total",
    "carbon_emissions_total",
    "daily_peak_average",
    "all_time_peak_average",
    "ramping_average",
    "electricity_consumption_total",
)


def district_series(env: Any) -> dict[str, np.ndarray]:
    """Per-step district series (kWh per step) of the simulated steps of a CityLearnEnv.

    Keys: ``net`` (grid, + import), ``load`` (non-shiftable), ``pv`` (generation, >= 0), ``battery``
    (+ charge / - discharge, grid side), ``ev`` (chargers, + charge / - V2G).
    """
    n = int(env.time_step)
    zeros = np.zeros(n)

    def total(attr: str) -> np.ndarray:
        out = zeros.copy()
        for b in env.buildings:
            v = np.asarray(getattr(b, attr), dtype=np.float64)[:n]
            out[: len(v)] += np.nan_to_num(v)
        return out

    return {
        "net": total("net_electricity_consumption"),
        "load": total("non_shiftable_load"),
        "pv": -total("solar_generation"),
        "battery": total("electrical_storage_electricity_consumption"),
        "ev": total("chargers_electricity_consumption"),
    }


def energy_kpis(
    series: dict[str, np.ndarray],
    step_h: float,
    co2_factor: float = CO2_FACTOR_KG_PER_KWH,
    ev_factor: float = EV_AVOIDED_KG_PER_KWH,
    steps_per_day: int = 24,
) -> dict[str, float]:
    """Energy totals, peaks, ramping and the seed's CO2 accounting from :func:`district_series`."""
    net, pv, bat, ev = series["net"], series["pv"], series["battery"], series["ev"]
    imp, exp = np.clip(net, 0, None), np.clip(-net, 0, None)
    n_days = max(len(net) // steps_per_day, 1)
    daily = (
        imp[: n_days * steps_per_day].reshape(n_days, -1).max(axis=1) if len(net) >= steps_per_day else imp
    )
    pv_used = max(float(pv.sum() - exp.sum()), 0.0)
    discharge = float(np.clip(-bat, 0, None).sum())
    ev_kwh = float(np.clip(ev, 0, None).sum())
    kpis = {
        "grid_import_kwh": float(imp.sum()),
        "grid_export_kwh": float(exp.sum()),
        "peak_import_kw": float(imp.max(initial=0.0)) / step_h,
        "daily_peak_import_mean_kw": float(np.mean(daily)) / step_h if len(daily) else 0.0,
        "ramping_mean_kw": float(np.abs(np.diff(net)).mean()) / step_h if len(net) > 1 else 0.0,
        "pv_generation_kwh": float(pv.sum()),
        "pv_used_on_site_kwh": pv_used,
        "battery_charge_kwh": float(np.clip(bat, 0, None).sum()),
        "battery_discharge_kwh": discharge,
        "ev_charged_kwh": ev_kwh,
        "co2_emitted_kg": float(imp.sum()) * co2_factor,
        "co2_indirect_solar_kg": pv_used * co2_factor,
        "co2_indirect_battery_kg": discharge * co2_factor,
        "co2_direct_reduction_kg": ev_kwh * ev_factor,
    }
    kpis["co2_indirect_reduction_kg"] = kpis["co2_indirect_solar_kg"] + kpis["co2_indirect_battery_kg"]
    return kpis


TOL = 1e-6


def _count(bad: np.ndarray) -> float:
    return float(np.count_nonzero(bad))


def limit_violations(env: Any) -> dict[str, float]:
    """Steps in which a battery or charger limit was broken over the simulated steps (module docstring)."""
    n = int(env.time_step)
    h = float(env.seconds_per_time_step) / 3600.0
    out = dict.fromkeys(("violations_battery_soc", "violations_battery_power", "violations_charger_power",
                         "violations_charger_no_vehicle", "violations_ev_soc"), 0.0)  # fmt: skip
    shortfall = 0.0
    for b in env.buildings:
        s = b.electrical_storage
        if s is not None and float(getattr(s, "capacity", 0.0) or 0.0) > 0:
            soc = np.asarray(s.soc, dtype=np.float64)[:n]
            lo = max(1.0 - float(s.depth_of_discharge), 0.0)
            out["violations_battery_soc"] += _count((soc < lo - TOL) | (soc > 1.0 + TOL))
            e = np.abs(np.asarray(b.electrical_storage_electricity_consumption, dtype=np.float64)[:n])
            out["violations_battery_power"] += _count(e > float(s.nominal_power) * h * (1 + TOL) + TOL)
        for c in b.electric_vehicle_chargers or []:
            e = np.asarray(c.electricity_consumption, dtype=np.float64)[:n]
            over = (e > float(c.max_charging_power) * h * (1 + TOL) + TOL) | (
                -e > float(c.max_discharging_power) * h * (1 + TOL) + TOL
            )
            out["violations_charger_power"] += _count(over)
            evs = list(c.past_connected_evs)[: len(e)]
            absent = np.array([ev is None for ev in evs] + [True] * (len(e) - len(evs)))
            out["violations_charger_no_vehicle"] += _count(absent & (np.abs(e) > TOL))
            for t, ev in enumerate(evs):
                if ev is None:
                    continue
                soc = float(ev.battery.soc[t])
                out["violations_ev_soc"] += float(soc < -TOL or soc > 1.0 + TOL)
            shortfall += _departure_shortfall(c, evs, n)
    out["limit_violations"] = float(sum(out.values()))
    out["ev_departure_shortfall_kwh"] = shortfall
    return out


def _departure_shortfall(charger: Any, evs: list[Any], n: int) -> float:
    """kWh missing at departure over the simulated steps (departure: the last step of a stay; CityLearn's
    KPI definition without its session-id refinements)."""
    sim = charger.charger_simulation
    state = np.asarray(sim.electric_vehicle_charger_state, dtype=np.float64)
    required = np.asarray(sim.electric_vehicle_required_soc_departure, dtype=np.float64)
    total = 0.0
    for t in range(min(n, len(evs))):
        ev = evs[t]
        if ev is None or state[t] != 1:
            continue
        leaving = t + 1 >= len(state) or state[t + 1] != 1 or (t + 1 < len(evs) and evs[t + 1] is not ev)
        if leaving and np.isfinite(required[t]) and required[t] >= 0:
            total += max(float(required[t]) - float(ev.battery.soc[t]), 0.0) * float(ev.battery.capacity)
    return total


def citylearn_kpis(env: Any) -> dict[str, float]:
    """CityLearn's district KPIs of the episode: ``evaluate_v2`` (without its own BAU rerun), ``evaluate``."""
    out: dict[str, float] = {}
    v2 = env.evaluate_v2(include_business_as_usual=False)
    d = v2[v2["level"] == "district"].set_index("cost_function")["value"]
    for ours, theirs in V2_KPIS.items():
        out[ours] = float(d[theirs]) if theirs in d.index else float("nan")
    legacy = env.evaluate()
    ld = legacy[legacy["level"] == "district"].set_index("cost_function")["value"]
    for name in LEGACY_KPIS:
        out[f"citylearn_{name}_to_baseline"] = float(ld[name]) if name in ld.index else float("nan")
    return out


def episode_kpis(
    env: Any, co2_factor: float = CO2_FACTOR_KG_PER_KWH, ev_factor: float = EV_AVOIDED_KG_PER_KWH
) -> dict[str, float]:
    """All KPIs of the episode just run on ``env`` (a CityLearnEnv), plus ``episode_return`` if known.

    Args:
        env: The unwrapped CityLearnEnv at the end of an episode.
        co2_factor: Grid CO2 factor of the seed's accounting (kg/kWh).
        ev_factor: CO2 avoided per kWh delivered to EVs (kg/kWh).
    """
    step_h = float(env.seconds_per_time_step) / 3600.0
    series = district_series(env)
    kpis = energy_kpis(series, step_h, co2_factor, ev_factor, steps_per_day=max(int(round(24 / step_h)), 1))
    kpis.update(citylearn_kpis(env))
    kpis.update(limit_violations(env))
    kpis["time_steps"] = float(len(series["net"]))
    return kpis
