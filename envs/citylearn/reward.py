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

    objective_b = w_co2 c_co2 + w_solar c_solar + w_cost c_cost + w_ev c_ev + w_peak c_peak

The five weights are the seed's objective (CO2 0.50, solar 0.20, cost 0.15, EV 0.10, peak 0.05). Under
them alone a controller gains by not charging vehicles at all: an imported kWh costs up to
``(w_co2 + w_cost + w_peak) / E_ref`` of objective, while a kWh missing at departure costs only
``w_ev / E_ev``, and ``E_ev`` (every socket at full power) is of the same order as ``E_ref``. So EV
satisfaction is also a **constraint**, priced above anything charging can cost::

    K      = (w_co2 + w_cost + w_peak) / E_ref               the most one imported kWh can cost (1 / E_ref
                                                             if those three weights are 0)
    u_v,t  = max(0, (required_soc - soc) * capacity          vehicle v's shortfall that is already certain:
                    - hours_until_departure * P_max)         what full power until departure cannot cover
    s_b,t  = sum over connected vehicles of (u_v,t - u_v,t-1)   (u_v = 0 before the vehicle's arrival)

    r_b = -(objective_b + lambda_ev * K * s_b,t)

``lambda_ev`` (``ev_constraint``, 10 by default) is the price of a missing kWh in units of the dearest
imported kWh. The increments of ``u`` telescope: over a stay they add up to the energy missing when the
vehicle leaves (at departure ``hours_until_departure = 0`` and ``u`` is the whole shortfall), so the penalty
is exactly ``lambda_ev * K`` per kWh missing at departure, but it is paid at the step where the shortfall
became unavoidable, not hours later (``ev_penalty_timing: departure`` pays it at departure instead). A stay
cut by the end of an episode still pays for what was already certain to be missing. A stay starts when a
vehicle is first seen plugged, or its countdown goes up, or the step after a countdown of 0 (so two one-step
stays back to back both pay); a vehicle plugged with no countdown (departure time -1, as one charger of
the 2022 district has for days) is thus treated as leaving at every step, and pays for any shortfall
each step it stays short. Charging a vehicle
to its target therefore always beats leaving it short once ``lambda_ev > 1 / charger efficiency``; "charge
nothing" scores below the rule-based controller (tests/test_citylearn_reward.py).

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
from typing import Any, Literal

import numpy as np
from citylearn.reward_function import RewardFunction

from envs.config import from_mapping

TERMS = ("co2", "solar", "cost", "ev", "peak")
"""The five objective terms, in the order of the seed's weights."""
CONSTRAINT = "ev_shortfall_kwh"
"""``last_terms`` key of the constraint's s_b,t (kWh, summed over buildings), beside the five terms."""


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
    ev_constraint: float = 10.0
    """lambda_ev: price of a kWh missing at departure, in units of the dearest imported kWh (K in the module
    docstring); 0 turns the constraint off (the seed's reward alone)."""
    ev_penalty_timing: Literal["unavoidable", "departure"] = "unavoidable"
    """When the shortfall is paid: as soon as it is certain (default), or when the vehicle leaves."""

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
        if self.ev_constraint < 0:
            raise ValueError(f"ev_constraint: must be >= 0, got {self.ev_constraint}")

    @property
    def kwh_price(self) -> float:
        """K: the most one imported kWh can cost under the weights (per the module docstring)."""
        if self.energy_scale_kwh is None:
            raise RuntimeError("MultiObjectiveReward: energy_scale_kwh not set; call calibrate(env)")
        w = self.co2 + self.cost + self.peak
        return (w if w > 0 else 1.0) / self.energy_scale_kwh


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
        self.last_terms: dict[str, float] = dict.fromkeys((*TERMS, CONSTRAINT), 0.0)
        self._peak: list[float] = []
        self._certain: dict[tuple[int, str], tuple[float, float]] = {}  # (building, charger) -> (u, hours)
        self._steps = 0

    def calibrate(self, env: Any) -> None:
        """Fill every scale left None from ``env`` (see :func:`reward_scales`)."""
        scales = reward_scales(env)
        fields = {k: v if v is not None else scales.get(k) for k, v in asdict(self.config).items()}
        self.config = RewardConfig(**fields)

    def reset(self) -> None:
        """Start of an episode: clear the peak windows."""
        self._peak = []
        self._certain = {}
        self._steps = 0
        self.last_terms = dict.fromkeys((*TERMS, CONSTRAINT), 0.0)

    def get_required_observation_names(self) -> Iterable[str]:
        return (
            "net_electricity_consumption",
            "solar_generation",
            "carbon_intensity",
            "electricity_pricing",
            "electric_vehicles_chargers_dict",
        )

    def terms(self, observation: Mapping[str, Any], building: int = 0) -> dict[str, float]:
        """The five unweighted terms of one building's step, plus the constraint's ``s_b,t`` (kWh) under
        :data:`CONSTRAINT` (updates that building's peak window and its vehicles' certain shortfall)."""
        c = self.config
        if None in (c.energy_scale_kwh, c.ev_energy_scale_kwh, c.price_scale, c.carbon_scale):
            raise RuntimeError(
                "MultiObjectiveReward: scales not set; give them as reward attributes or call calibrate(env)"
            )
        e_net = float(observation["net_electricity_consumption"])
        imp, exp = max(e_net, 0.0), max(-e_net, 0.0)
        gen = max(float(observation.get("solar_generation", 0.0)), 0.0)
        ev_missing, shortfall = 0.0, 0.0
        for cid, data in (observation.get("electric_vehicles_chargers_dict") or {}).items():
            key = (building, str(cid))
            if not data.get("connected") or data.get("required_soc") is None:
                self._certain.pop(key, None)
                continue
            soc, cap = float(data["battery_soc"]), float(data["battery_capacity"])
            missing = max(float(data["required_soc"]) - soc, 0.0) * cap
            hours = max(float(data.get("hours_until_departure") or 0.0), 0.0)
            if hours == 0:
                ev_missing += missing
            if c.ev_penalty_timing == "departure":
                shortfall += missing if hours == 0 else 0.0
                continue
            certain = max(missing - hours * max(float(data.get("max_charging_power") or 0.0), 0.0), 0.0)
            before, last_hours = self._certain.get(key, (0.0, -1.0))
            if last_hours <= 0.0 or hours > last_hours:  # a new stay: nothing was certain before it
                before = 0.0
            shortfall += certain - before
            self._certain[key] = (certain, hours)
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
            CONSTRAINT: shortfall,
        }

    def calculate(self, observations: list[Mapping[str, Any]]) -> list[float]:
        """Reward of the step just simulated, from each building's observations (CityLearn's interface)."""
        if self._steps % self.config.peak_window_steps == 0:
            self._peak = [0.0] * len(observations)
        self._steps += 1
        weights = {k: getattr(self.config, k) for k in TERMS}
        price = self.config.ev_constraint * self.config.kwh_price
        per_building, totals = [], dict.fromkeys((*TERMS, CONSTRAINT), 0.0)
        for i, obs in enumerate(observations):
            t = self.terms(obs, building=i)
            per_building.append(-sum(weights[k] * t[k] for k in TERMS) - price * t[CONSTRAINT])
            for k in totals:
                totals[k] += t[k]
        self.last_terms = totals
        return [float(sum(per_building))] if self.central_agent else per_building
