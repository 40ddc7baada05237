"""The weighted multi-objective reward of the CityLearn domain, as a CityLearn ``RewardFunction``.

Per building ``b`` and step ``t``, with energies in kWh over the step::

    I  = max(E_net, 0)          grid import         (E_net: CityLearn's net_electricity_consumption)
    X  = max(-E_net, 0)         grid export
    G  = solar generation (>= 0)

    c_co2   = CI_t * I / (CI_ref * E_ref)                    CO2 of the imported energy
    c_solar = min(X, G) / E_ref                              PV energy exported, i.e. not self-consumed
    c_cost  = price_t * I / (price_ref * E_ref)              cost of the imported energy (no feed-in tariff)
    c_ev    = sum over vehicles leaving after this step of
              max(required_soc - soc, 0) * capacity / E_ev   energy missing at departure
    c_peak  = max(0, I - M) / E_ref, then M <- max(M, I)     growth of the import peak M of the current window
                                                             (M = 0 at each window start: over a window the
                                                             c_peak terms add up to the window's peak / E_ref)

    r_b = -(w_co2 c_co2 + w_solar c_solar + w_cost c_cost + w_ev c_ev + w_peak c_peak)

With a central agent the reward is ``[sum_b r_b]``, otherwise ``[r_b for each building]``.

Scales: ``E_ref`` (``energy_scale_kwh``) is the building's peak demand per step (peak load plus every
charger at full power), ``CI_ref`` and ``price_ref`` the largest carbon intensity and price of the
simulation, ``E_ev`` (``ev_energy_scale_kwh``) all chargers at full power for one step. Each term is then
about 0..1 in a step where that objective is at its worst. The schema builder writes the scales into the
mall's schema; for any other schema :meth:`MultiObjectiveReward.calibrate` derives them from the env.

Net export: no term divides by a flow that can be zero or change sign (only by the positive constants
above), so the reward is finite and bounded whatever the sign of ``E_net``; when the site exports, c_co2,
c_cost and c_peak are 0 and c_solar measures the export that storage or EV charging could still absorb.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from citylearn.reward_function import RewardFunction

from envs.config import from_mapping

TERMS = ("co2", "solar", "cost", "ev", "peak")


@dataclass(frozen=True)
class RewardConfig:
    """Weights and scales of :class:`MultiObjectiveReward` (formula in the module docstring)."""

    co2: float = 0.50
    """Weight of the CO2 of imported energy."""
    solar: float = 0.20
    """Weight of the PV energy exported instead of self-consumed."""
    cost: float = 0.15
    """Weight of the cost of imported energy."""
    ev: float = 0.10
    """Weight of the EV energy missing at departure."""
    peak: float = 0.05
    """Weight of the growth of the grid import peak."""
    energy_scale_kwh: float | None = None
    """E_ref in kWh per step; None: set by :meth:`MultiObjectiveReward.calibrate`."""
    ev_energy_scale_kwh: float | None = None
    """E_ev in kWh per step; None: set by calibrate."""
    price_scale: float | None = None
    """price_ref in currency per kWh; None: set by calibrate."""
    carbon_scale: float | None = None
    """CI_ref in kg per kWh; None: set by calibrate."""
    peak_window_steps: int = 24
    """Length of the peak window in steps (24 hourly steps: daily peaks)."""

    def __post_init__(self) -> None:
        for name in TERMS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: weights must be >= 0, got {getattr(self, name)}")
        for name in ("energy_scale_kwh", "ev_energy_scale_kwh", "price_scale", "carbon_scale"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name}: must be > 0 (or null to calibrate), got {v}")
        if self.peak_window_steps < 1:
            raise ValueError(f"peak_window_steps: must be >= 1, got {self.peak_window_steps}")


def reward_scales(env: Any) -> dict[str, float]:
    """E_ref, E_ev, price_ref and CI_ref of a CityLearnEnv, per the module docstring (max over buildings).

    Args:
        env: A ``citylearn.citylearn.CityLearnEnv`` (unwrapped).
    """
    hours = float(env.seconds_per_time_step) / 3600.0
    e_ref, e_ev, price, ci = 0.0, 0.0, 0.0, 0.0
    for b in env.buildings:
        sim = b.energy_simulation
        demand = sim.non_shiftable_load + sim.dhw_demand + sim.cooling_demand + sim.heating_demand
        chargers = sum(c.max_charging_power for c in (b.electric_vehicle_chargers or [])) * hours
        e_ref = max(e_ref, float(np.nanmax(demand)) + chargers)
        e_ev = max(e_ev, chargers)
        price = max(price, float(np.nanmax(b.pricing.electricity_pricing)) if b.pricing is not None else 0.0)
        ci = max(
            ci,
            float(np.nanmax(b.carbon_intensity.carbon_intensity)) if b.carbon_intensity is not None else 0.0,
        )
    return {
        "energy_scale_kwh": max(e_ref, 1e-3),
        "ev_energy_scale_kwh": max(e_ev, 1e-3),
        "price_scale": max(price, 1e-6),
        "carbon_scale": max(ci, 1e-6),
    }


class MultiObjectiveReward(RewardFunction):
    """Weighted CO2 / solar self-consumption / cost / EV satisfaction / grid peak reward.

    The formula, its scales and why it stays defined under net export are in the module docstring.
    CityLearn builds it from a schema's ``reward_function`` (``type`` = this class's dotted path,
    ``attributes`` = the fields of :class:`RewardConfig`).

    Args:
        env_metadata: CityLearn's env metadata (CityLearn passes None, then sets it).
        **config: Fields of :class:`RewardConfig`; an unknown or ill-typed one is a ConfigError.
    """

    def __init__(self, env_metadata: Mapping[str, Any] | None = None, **config: Any) -> None:
        super().__init__(env_metadata)
        self.config: RewardConfig = from_mapping(RewardConfig, config, source="reward_function.attributes")
        self.last_terms: dict[str, float] = dict.fromkeys(TERMS, 0.0)
        self._peak: list[float] = []
        self._steps = 0

    def calibrate(self, env: Any) -> None:
        """Fill every scale left None from ``env`` (see :func:`reward_scales`)."""
        scales = reward_scales(env)
        fields = {k: v if v is not None else scales.get(k) for k, v in asdict(self.config).items()}
        self.config = RewardConfig(**fields)

    def reset(self) -> None:
        """Start of an episode: clear the peak windows."""
        self._peak = []
        self._steps = 0
        self.last_terms = dict.fromkeys(TERMS, 0.0)

    def get_required_observation_names(self) -> Iterable[str]:
        return (
            "net_electricity_consumption",
            "solar_generation",
            "carbon_intensity",
            "electricity_pricing",
            "electric_vehicles_chargers_dict",
        )

    def terms(self, observation: Mapping[str, Any], building: int = 0) -> dict[str, float]:
        """The five unweighted terms of one building's step (updates that building's peak window)."""
        c = self.config
        if None in (c.energy_scale_kwh, c.ev_energy_scale_kwh, c.price_scale, c.carbon_scale):
            raise RuntimeError(
                "MultiObjectiveReward: scales not set; give them as reward attributes or call calibrate(env)"
            )
        e_net = float(observation["net_electricity_consumption"])
        imp, exp = max(e_net, 0.0), max(-e_net, 0.0)
        gen = max(float(observation.get("solar_generation", 0.0)), 0.0)
        ev_missing = 0.0
        for data in (observation.get("electric_vehicles_chargers_dict") or {}).values():
            if (
                data.get("connected")
                and data.get("required_soc") is not None
                and data.get("hours_until_departure") == 0
            ):
                soc, cap = float(data["battery_soc"]), float(data["battery_capacity"])
                ev_missing += max(float(data["required_soc"]) - soc, 0.0) * cap
        while len(self._peak) <= building:
            self._peak.append(0.0)
        peak_growth = max(imp - self._peak[building], 0.0)
        self._peak[building] = max(self._peak[building], imp)
        e_ref = c.energy_scale_kwh
        return {
            "co2": float(observation.get("carbon_intensity", 0.0)) * imp / (c.carbon_scale * e_ref),
            "solar": min(exp, gen) / e_ref,
            "cost": float(observation.get("electricity_pricing", 0.0)) * imp / (c.price_scale * e_ref),
            "ev": ev_missing / c.ev_energy_scale_kwh,
            "peak": peak_growth / e_ref,
        }

    def calculate(self, observations: list[Mapping[str, Any]]) -> list[float]:
        """Reward of the step just simulated, from each building's observations (CityLearn's interface)."""
        if self._steps % self.config.peak_window_steps == 0:
            self._peak = [0.0] * len(observations)
        self._steps += 1
        weights = {k: getattr(self.config, k) for k in TERMS}
        per_building, totals = [], dict.fromkeys(TERMS, 0.0)
        for i, obs in enumerate(observations):
            t = self.terms(obs, building=i)
            per_building.append(-sum(weights[k] * t[k] for k in TERMS))
            for k in TERMS:
                totals[k] += t[k]
        self.last_terms = totals
        return [float(sum(per_building))] if self.central_agent else per_building
