"""A perfect-foresight bound: the least cost (or CO2) any controller could reach on an episode.

Per building, one linear program over the episode's steps, knowing the whole week in advance::

    net_t  = base_t + c_t - d_t + sum_j (e_jt - v_jt)        base: load - PV with battery and sockets idle
    i_t   >= net_t, i_t >= 0                                 import (CityLearn's cost and emissions KPIs
                                                             price each building's import, no export credit)
    s_t    = s_t-1 + eta c_t - d_t / eta                     battery energy, s in [(1 - DoD) cap, cap],
                                                             c, d <= nominal power x step
    q_kt   = q_kt-1 + eta_j e_jt - v_jt / eta_j              each stay k of a vehicle at socket j: energy in
                                                             [0, capacity], charging (and V2G where the
                                                             charger allows) only while plugged
    q_k,departure + u_k >= required_soc x capacity           u_k: shortfall, priced at ``shortfall_price``
                                                             per kWh (never worth it)

    minimise  sum_t w_t i_t + shortfall_price sum_k u_k      w: the price (``cost``) or the carbon
                                                             intensity (``co2``)

It relaxes the simulator where that can only help the controller: the battery's efficiency is the best of
its power-efficiency curve at every power, its charge power does not fall near full, it has no
self-discharge, vehicles' batteries lose nothing beyond the charger's efficiency, and sockets have no
minimum power. So no controller that charges every departing vehicle to its target does better on that
episode than this bound (up to CityLearn's SoC noise on arriving vehicles): ``(rbc - bound) / rbc`` is the
most such a policy could gain over the RBC, the ceiling of a "5 % below the RBC" target. Two things it does
not cover: a controller may leave some vehicles short (the target allows EV success 2 points below the
RBC's), and it may leave a vehicle still plugged at the episode's end emptier than the RBC's even spread
(no KPI sees it; the bound charges it that far).

Stays, arrival SoCs and the idle ``base`` (net consumption less what the battery and sockets drew) come from
running the episode under the RBC in the env: the vehicles arrive as they did for the RBC, which the bound is
compared with (under every action 0, a vehicle that charged nowhere would arrive emptier than it does), with
the evaluation's episode index (CityLearn seeds the vehicles' SoC drift with it). A vehicle still plugged at
the episode's end owes the share of its energy that an even spread over its stay would have delivered by
then (:class:`Stay` ``progress``): the bound neither skips nor front-loads energy needed after the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Objective = Literal["cost", "co2"]
"""Least cost or least CO2; :func:`plan_episode` also takes a share of cost in [0, 1]."""


@dataclass
class Stay:
    """A vehicle's stay at a socket: steps [arrival, departure] (departure = last plugged step)."""

    charger: int
    arrival: int
    departure: int
    soc0: float
    required: float
    capacity: float
    progress: float = 1.0
    """Share of the way from ``soc0`` to ``required`` owed at ``departure``: 1 for a vehicle that leaves
    within the episode; for one still plugged at the episode's end, the share of its stay spent by then (the
    RBC's even spread), so the bound neither skips nor front-loads energy the vehicle needs after the window.
    """


def _stays(b: Any, n: int, socs: np.ndarray, columns: dict[str, int], h: float = 1.0) -> list[Stay]:
    """The vehicles' stays at ``b``'s sockets over the ``n`` simulated steps. ``socs`` (steps, chargers) is
    every plugged vehicle's SoC as the RBC observed it (``DeviceState.ev``'s SoC column, NaN where none),
    ``columns`` maps a charger id to its column (a vehicle's own SoC history is not reliable after an
    earlier episode: the same vehicle object visits several sockets and episodes)."""
    out = []
    for j, c in enumerate(b.electric_vehicle_chargers or []):
        sim = c.charger_simulation
        state = np.asarray(sim.electric_vehicle_charger_state, dtype=np.float64)
        required = np.asarray(sim.electric_vehicle_required_soc_departure, dtype=np.float64)
        hours_left = np.asarray(sim.electric_vehicle_departure_time, dtype=np.float64)
        evs = list(c.past_connected_evs)[:n]
        t = 0
        while t < n:
            ev = evs[t] if t < len(evs) else None
            if ev is None or state[t] != 1:
                t += 1
                continue
            start = t
            while t + 1 < n and t + 1 < len(evs) and evs[t + 1] is ev and state[t + 1] == 1:
                if t + 1 < len(required) and required[t + 1] != required[start]:
                    break
                t += 1
            req = float(required[t]) if np.isfinite(required[t]) and required[t] >= 0 else 0.0
            progress = 1.0
            if t == n - 1 and np.isfinite(hours_left[start]) and hours_left[start] > 0:  # leaves later
                steps_total = hours_left[start] / h + 1.0  # as the RBC counts: the countdown + this step
                progress = min((t - start + 1) / steps_total, 1.0)
            observed = socs[start, columns[c.charger_id]] if c.charger_id in columns else np.nan
            soc0 = float(observed) if np.isfinite(observed) else float(ev.battery.soc[start])
            out.append(Stay(j, start, t, soc0, req, float(ev.battery.capacity), progress))
            t += 1
    return out


class _Rows:
    """Linear constraint rows built term by term: ``add([(column, coefficient), ...], rhs)``."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.rhs: list[float] = []

    def add(self, terms: list[tuple[int, float]], rhs: float) -> None:
        for c, v in terms:
            self.rows.append(len(self.rhs))
            self.cols.append(c)
            self.vals.append(v)
        self.rhs.append(rhs)

    def matrix(self, n_vars: int) -> Any:
        """The rows as a sparse (rows, n_vars) matrix; None when there are none."""
        from scipy.sparse import coo_matrix

        if not self.rhs:
            return None
        return coo_matrix((self.vals, (self.rows, self.cols)), shape=(len(self.rhs), n_vars)).tocsr()


def _building_lp(
    b: Any,
    n: int,
    h: float,
    weight: np.ndarray,
    base: np.ndarray,
    stays: list[Stay],
    shortfall_price: float,
    vehicle_efficiency: float = 1.0,
) -> dict[str, Any]:
    """One building's plan (module docstring). ``vehicle_efficiency`` multiplies each charger's efficiency:
    1 for the bound (vehicles' batteries lossless); below 1 for a plan meant to be run in CityLearn, whose
    vehicle batteries lose energy of their own (about 10 % one way at a socket's power on the 2022 district).
    """
    from scipy.optimize import linprog

    chargers = list(b.electric_vehicle_chargers or [])
    storage = b.electrical_storage
    has_battery = storage is not None and float(getattr(storage, "capacity", 0.0) or 0.0) > 0
    names: list[tuple[str, int, int]] = []  # (kind, index, step)

    def var(kind: str, k: int, t: int) -> int:
        names.append((kind, k, t))
        return len(names) - 1

    imp = [var("i", 0, t) for t in range(n)]
    bat = []
    if has_battery:
        bat = [(var("c", 0, t), var("d", 0, t), var("s", 0, t)) for t in range(n)]
    ev_vars = []
    for k, st in enumerate(stays):
        v2g = float(chargers[st.charger].max_discharging_power) > 0
        ev_vars.append([(var("e", k, t), var("v", k, t) if v2g else None, var("q", k, t))
                        for t in range(st.arrival, st.departure + 1)])  # fmt: skip
    short = [var("u", k, 0) for k in range(len(stays))]
    nv = len(names)
    cost = np.zeros(nv)
    cost[imp] = weight[:n]
    cost[short] = shortfall_price
    lo, hi = np.zeros(nv), np.full(nv, np.inf)
    upper, equal = _Rows(), _Rows()  # A_ub x <= b_ub, A_eq x = b_eq
    ub, eq = upper.add, equal.add

    flows: list[list[tuple[int, float]]] = [[] for _ in range(n)]  # terms of net_t beyond base_t
    if has_battery:
        curve = np.asarray(getattr(storage, "power_efficiency_curve", [[0, 1], [storage.efficiency] * 2]))
        # CityLearn applies sqrt(efficiency) each way (Battery.round_trip_efficiency): the curve's best
        eta = float(np.sqrt(np.max(curve[1]) if curve.ndim == 2 else storage.efficiency))
        cap, p = float(storage.capacity), float(storage.nominal_power) * h
        s_min = max(1.0 - float(storage.depth_of_discharge), 0.0) * cap
        s_prev: int | None = None
        s0 = float(storage.initial_soc) * cap
        for t, (c, d, s) in enumerate(bat):
            hi[c] = hi[d] = p
            lo[s], hi[s] = s_min, cap
            terms = [(s, 1.0), (c, -eta), (d, 1.0 / eta)] + ([(s_prev, -1.0)] if s_prev is not None else [])
            eq(terms, 0.0 if s_prev is not None else s0)
            s_prev = s
            flows[t] += [(c, 1.0), (d, -1.0)]
    for k, st in enumerate(stays):
        c = chargers[st.charger]
        eta_j = float(c.efficiency) * vehicle_efficiency
        q_prev: int | None = None
        for t, (e, v, q) in zip(range(st.arrival, st.departure + 1), ev_vars[k], strict=True):
            hi[e] = float(c.max_charging_power) * h
            lo[q], hi[q] = 0.0, st.capacity
            terms = [(q, 1.0), (e, -eta_j)]
            if v is not None:
                hi[v] = float(c.max_discharging_power) * h
                terms.append((v, 1.0 / eta_j))
                flows[t].append((v, -1.0))
            flows[t].append((e, 1.0))
            if q_prev is not None:
                terms.append((q_prev, -1.0))
            eq(terms, 0.0 if q_prev is not None else st.soc0 * st.capacity)
            q_prev = q
        owed = st.soc0 + st.progress * (st.required - st.soc0)  # = required for a vehicle that leaves
        ub([(q_prev, -1.0), (short[k], -1.0)], -owed * st.capacity)
    for t in range(n):  # net_t - i_t <= 0  <=>  base_t + flows - i_t <= 0
        ub([*flows[t], (imp[t], -1.0)], -float(base[t]))
    res = linprog(cost, A_ub=upper.matrix(nv), b_ub=upper.rhs, A_eq=equal.matrix(nv), b_eq=equal.rhs or None,
                  bounds=list(zip(lo, hi, strict=True)), method="highs")  # fmt: skip
    if res.status != 0:
        raise RuntimeError(f"{b.name}: the bound's linear program failed: {res.message}")
    x = res.x
    battery = np.zeros(n)
    for t, (c, d, _) in enumerate(bat):
        battery[t] = x[c] - x[d]
    sockets = np.zeros((len(chargers), n))  # grid-side kWh through each socket (V2G negative)
    for k, st in enumerate(stays):
        for t, (e, v, _) in zip(range(st.arrival, st.departure + 1), ev_vars[k], strict=True):
            sockets[st.charger, t] += x[e] - (x[v] if v is not None else 0.0)
    return {
        "import": x[imp],
        "battery_kwh": battery,
        "socket_kwh": sockets,
        "shortfall_kwh": float(np.sum(x[short])) if short else 0.0,
        "shortfalls": [float(x[u]) for u in short],
        "ev_kwh": float(sum(x[e] for vs in ev_vars for e, _, _ in vs)),
    }


@dataclass
class Plan:
    """A plan over an episode: its KPIs as the linear programs count them, and its actions per step."""

    kpis: dict[str, float]
    actions: np.ndarray
    """(steps, actions) in the env's action units (a battery's share of its nominal power, a socket's of its
    charging power; :class:`envs.citylearn.devices.DeviceTable`), clipped to [-1, 1]."""


def _weight(price: np.ndarray, ci: np.ndarray, objective: Objective | float) -> np.ndarray:
    """The per-kWh weight of import: the price, the carbon intensity, or ``a`` x price / its mean +
    (1 - a) x intensity / its mean for a number ``a`` in [0, 1]."""
    if objective == "cost":
        return price
    if objective == "co2":
        return ci
    a = float(objective)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"objective: 'cost', 'co2' or a share of cost in [0, 1], got {objective!r}")
    return a * price / max(float(np.mean(price)), 1e-12) + (1.0 - a) * ci / max(float(np.mean(ci)), 1e-12)


def plan_episode(
    env: Any,
    objective: Objective | float = "cost",
    seed: int | None = 0,
    shortfall_price: float = 100.0,
    vehicle_efficiency: float = 1.0,
    soc_margin: float = 0.0,
) -> Plan:
    """The linear programs' plan for ``env``'s current episode window (module docstring).

    Args:
        env: A :class:`envs.citylearn.env.CityLearnRLlibEnv` (reset here, run under the RBC).
        objective: ``cost`` (price-weighted import), ``co2`` (carbon-intensity-weighted import), or a share
            of cost in [0, 1] (each weight scaled by its mean over the episode).
        seed: Reset seed (the evaluation's, so arriving vehicles have the same SoC).
        shortfall_price: Price of a kWh missing at departure, per unit of the objective's weight; above any
            price or carbon intensity, so the bound leaves a vehicle short only where no plan can fill it.
        vehicle_efficiency: Multiplies every charger's efficiency (1: the bound; :func:`_building_lp`).
        soc_margin: Added to every departing vehicle's required SoC, whose energy must then arrive one step
            before departure (as the RBC aims): 0 for the bound; a plan to run in CityLearn needs both.

    Returns:
        The plan: KPIs ``cost_total``, ``carbon_emissions_kg``, ``grid_import_kwh``, ``ev_charged_kwh``,
        ``ev_departure_shortfall_kwh``, ``time_steps``, and the actions of every step.
    """
    import dataclasses

    from envs.citylearn.devices import DeviceTable, rbc_action, state_from_env

    cl = env.citylearn
    table = DeviceTable.from_env(cl)
    # CityLearn seeds the vehicles' SoC drift with seed + episode index: the evaluation's index (evaluate.py)
    cl.episode_tracker.reset_episode_index()
    obs, _ = env.reset(seed=seed)
    done = False
    socs = []  # per step: every plugged vehicle's SoC as the RBC observes it (a stay's first: its arrival)
    while not done:
        state = state_from_env(cl, table)
        socs.append(state.ev[:, 1])
        obs, _, terminated, truncated, _ = env.step(rbc_action(table, state))
        done = terminated or truncated
    socs_by_step = np.array(socs).reshape(len(socs), len(table.chargers))
    rows = iter(range(len(table.chargers)))  # DeviceState.ev's rows: the table's chargers, by building
    columns = [{c.charger_id: next(rows) for c in spec.chargers} for spec in table.buildings]
    n = int(cl.time_step)
    h = float(cl.seconds_per_time_step) / 3600.0
    totals = dict.fromkeys(("cost_total", "carbon_emissions_kg", "grid_import_kwh", "ev_charged_kwh",
                            "ev_departure_shortfall_kwh"), 0.0)  # fmt: skip
    actions = np.zeros((n, table.n_actions))
    for b, spec, column in zip(cl.buildings, table.buildings, columns, strict=True):
        # the building with its battery and sockets idle: the RBC's net less what they drew
        base = sum(np.nan_to_num(np.asarray(getattr(b, k), dtype=np.float64)[:n]) * sign for k, sign in (
            ("net_electricity_consumption", 1.0), ("electrical_storage_electricity_consumption", -1.0),
            ("chargers_electricity_consumption", -1.0)))  # fmt: skip
        price = (np.asarray(b.pricing.electricity_pricing, dtype=np.float64)[:n]
                 if b.pricing is not None else np.zeros(n))  # fmt: skip
        ci = (np.asarray(b.carbon_intensity.carbon_intensity, dtype=np.float64)[:n]
              if b.carbon_intensity is not None else np.zeros(n))  # fmt: skip
        weight = _weight(price, ci, objective)
        scale = float(np.max(weight)) if np.max(weight) > 0 else 1.0
        stays = _stays(b, n, socs_by_step, column, h)
        if soc_margin:
            stays = [dataclasses.replace(st, required=min(st.required + soc_margin, 1.0),
                                         departure=max(st.departure - 1, st.arrival))
                     if st.progress == 1.0 else st for st in stays]  # fmt: skip
        plan = _building_lp(b, n, h, weight, base, stays, shortfall_price * scale, vehicle_efficiency)
        imp = plan["import"]
        totals["cost_total"] += float(price @ imp)
        totals["carbon_emissions_kg"] += float(ci @ imp)
        totals["grid_import_kwh"] += float(imp.sum())
        totals["ev_charged_kwh"] += plan["ev_kwh"]
        totals["ev_departure_shortfall_kwh"] += plan["shortfall_kwh"]
        if spec.battery is not None and spec.battery.nominal_power_kw > 0:
            actions[:, spec.battery.slot] = plan["battery_kwh"] / (spec.battery.nominal_power_kw * h)
        socket = {c.charger_id: j for j, c in enumerate(b.electric_vehicle_chargers or [])}  # plan's rows
        for c in spec.chargers:
            if c.max_charging_power_kw > 0:
                actions[:, c.slot] = plan["socket_kwh"][socket[c.charger_id]] / (c.max_charging_power_kw * h)
    totals["time_steps"] = float(n)
    return Plan(totals, np.clip(actions, -1.0, 1.0).astype(np.float32))


def oracle_kpis(
    env: Any, objective: Objective | float = "cost", seed: int | None = 0, shortfall_price: float = 100.0
) -> dict[str, float]:
    """The bound on ``env``'s current episode window (module docstring), as KPIs named like the
    evaluation's (:func:`plan_episode` with the bound's settings; its arguments)."""
    return plan_episode(env, objective, seed, shortfall_price).kpis


class PlanReplay:
    """A controller that replays a plan step by step in the env it was made for (it knows the future: a
    benchmark's yardstick, never a policy). Made per window with :meth:`for_window`."""

    def __init__(self, env: Any, **plan_kwargs: Any) -> None:
        self.env = env
        self.plan_kwargs = plan_kwargs
        self.actions: np.ndarray | None = None

    def for_window(self) -> PlanReplay:
        """Plan the env's current window (runs the RBC once); returns self."""
        self.actions = plan_episode(self.env, **self.plan_kwargs).actions
        return self

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.actions is None:
            raise RuntimeError("PlanReplay: call for_window() after setting the env's window")
        return self.actions[min(int(self.env.citylearn.time_step), len(self.actions) - 1)]
