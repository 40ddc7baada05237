"""The perfect-foresight oracle: the lower bound on export that the PI and the policies are judged against.

The oracle knows the next second's PV and base load exactly and the link's delays (its commands land
when needed, none is lost). It runs on a **relaxation** of the site (:func:`relax_site`): slaves take
any power between 0 and their maximum (no EV 6 A minimum, the heat pump modulates instead of switching,
no ramps, no deadband), with the same energy limits (tanks, EV demand, plug-in times). Every real
controller's feasible set is contained in the relaxed one, so nothing can export less than the optimum
of the relaxation; and on it the greedy policy "absorb min(surplus, available power) every second" is
that optimum: a kWh absorbed counts the same whenever it is absorbed, and absorbing as early as possible
never leaves less room later (tanks only gain room, by their draws, and lose draws when empty).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from envs.dispatch import allocate_to_phases
from envs.simulator import Simulator
from envs.site import Site
from envs.state_spec import FEAT

_AVAIL_L = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]
_UNLIMITED_TANK_KWH = 1e6


def relax_site(site: Site) -> Site:
    """The site with continuous, instantaneous slaves and a zero deadband (see the module docstring)."""
    slaves = []
    for sl in site.slaves:
        relaxed = replace(sl, ramp_w_per_s=1e9, min_on_s=0, min_off_s=0)
        if sl.kind == "ev_charger":
            relaxed = replace(relaxed, min_power_w=1e-6)
        elif sl.kind == "heat_pump":  # a modulating heat sink with the same buffer: a water-heater model
            tank = sl.tank_kwh if sl.tank_kwh > 0 else _UNLIMITED_TANK_KWH
            relaxed = replace(relaxed, kind="water_heater", tank_kwh=tank)
        slaves.append(relaxed)
    return replace(site, slaves=tuple(slaves), control=replace(site.control, deadband_w=0.0))


class OracleController:
    """Greedy with perfect foresight on the relaxed site; bound to its simulator by ``bind``."""

    name = "oracle"
    needs_perfect_link = True

    def __init__(self, relaxed: bool = True) -> None:
        self.sim: Simulator | None = None
        self.relaxed = relaxed
        """False: the same foresight and perfect link on the real site (the EV's 6 A minimum, the heat pump's
        on/off and minimum times, ramps, deadband): not a bound, but what foresight alone buys a real
        controller (tests/benchmarks/bench_bounds.py)."""

    def prepare_site(self, site: Site) -> Site:
        """The site the oracle runs on: the relaxation (the default) or the site itself."""
        return relax_site(site) if self.relaxed else site

    def bind(self, sim: Simulator) -> None:
        """Give the oracle its foresight: the simulator whose future it may read."""
        self.sim = sim

    def reset(self, batch: int = 1) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.sim is None:
            raise RuntimeError("OracleController.bind(sim) must be called before act()")
        obs = np.atleast_2d(obs)
        surplus = self.sim.true_surplus_w(1)
        total = surplus.sum(-1) - obs[:, FEAT["setpoint_w"]]
        return allocate_to_phases(total, surplus, obs[:, _AVAIL_L])
