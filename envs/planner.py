"""Day-ahead bounds and plans of the export domain with perfect foresight (HiGHS, scipy.optimize.milp).

The oracle (envs/oracle.py) is greedy on a *relaxed* site (continuous devices): no real controller reaches
it. This module answers the question between the two: how little can a controller export on the *real*
devices, knowing the whole day?

* :func:`lower_bound`: an LP whose optimum no real controller can beat (a valid lower bound).
* :func:`solve_plan` and :class:`PlanController`: a MILP with the real discrete constraints at a coarse
  step, executed in the real simulator. Its export is achievable, so an upper bound on the real optimum.

Both read a day from a reset :class:`~envs.simulator.Simulator` (:func:`day_arrays`): the true surplus
``S_t = sum_p (pv_p - base_p)`` of every 1 s step ``t`` (the simulator's step ``t`` uses row ``t + 1`` of its
exogenous arrays), the EV's plug-in seconds, the tanks' draws and the initial fills.

Identities used throughout (per second, ``C_t`` the controlled power, ``S+ = max(S, 0)``, metrics of record
of envs/metrics.py): ``export_t = (S+_t - C_t)+``, ``controlled import_t = (C_t - S+_t)+``, so over any set of
seconds ``export = sum S+ - useful`` and ``import = sum C - useful`` with ``useful_t = min(S+_t, C_t)``.

The lower bound (time step ``dt_s``, 60 s by default; energies per step, in Wh)
-------------------------------------------------------------------------------
Variables per step k: each device's energy ``e_s,k``, the useful absorption ``u_k``, tank levels at step
ends, unmet draws (a tank at 0 lets a draw go unserved) and the heat pump's spill (the simulator clips a
full buffer: up to one second of compressor power is absorbed without being stored, then the unit rests
``min_off_s``). Constraints, each satisfied by every real trajectory (so the LP optimum bounds them all):

* ``0 <= e_s,k <= pmax_s * (seconds available)``; tank balances at step ends, levels in [0, capacity];
  the EV's energy over the day <= its demand (+ one second of spill);
* ``u_k <= sum_t min(S+_t, sum_s pmax_s avail_s,t)`` (no second absorbs more than its surplus or the power
  available) and ``u_k <= sum_s e_s,k`` (import >= 0);
* per device, ``import_k >= psi_s,k(e_s,k)``: the least import any on-pattern of that device can cause
  while delivering ``e_s,k`` in step k, given the step's per-second surplus (supporting lines of its convex
  hull). EV: each second on draws >= ``min_power_w`` (6 A), so an on-second with ``S+ < min`` imports
  ``min - S+``; heat pump: on-seconds draw exactly ``max_power_w`` and, its minimum off time being longer
  than a step, they form one interval per step (on, off, on within a step is impossible); water heater:
  only energy beyond ``sum_t min(S+_t, pmax)`` imports.

Left relaxed (so the bound is below the true optimum): the heat pump's minimum times across steps, the EV's
and water heater's ramps, the link and the deadband, and which seconds inside a step each device uses
beyond the per-device cuts (devices may share the sunny seconds). Objectives: ``export`` (min export, a
tiny weight on import), ``export`` with ``import_cap_kwh`` (import <= cap), ``wasted`` (export + import).

The plan (MILP) and its execution
---------------------------------
Per step: heat pump on/off (binary, decided per ``switch_s`` = 300 s, which covers its minimum on and off
times), EV off or at a constant level in ``[min_power_w, max_power_w]`` (on/off per ``switch_s``, the level
per step; only in steps where it is plugged throughout),
the water heater's energy. With ``L_k`` the EV + heat-pump level, the model's export is
``max(f_k(L_k + W), f_k(L_k) - e_wh,k)`` and its import ``g_k(L_k)``, where ``f_k(L) = sum_t (S+_t - L)+``
and ``g_k(L) = sum_t (L - S+_t)+`` (tangent cuts at quantiles of the step's surplus): the water heater
trims what the lumpy devices leave, up to its power and energy. Objective ``export + import_weight *
import``. :class:`PlanController` executes it in the simulator with the oracle's privileges (foresight,
perfect link): heat pump and EV follow the plan; the water heater absorbs the next second's true
residual surplus (greedy, which is export-optimal for a continuous device given the others' schedule).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from envs.dispatch import (
    KIND_EV,
    KIND_HEAT_PUMP,
    SP_KIND,
    SP_MAX_W,
    SP_MIN_OFF,
    SP_MIN_ON,
    SP_MIN_W,
    SP_PHASE,
    SP_RAMP,
    SP_TANK_J,
)
from envs.simulator import SS_APPLIED, SS_FILL, SS_IS_ON, SS_SENT_VAL, SS_TIS, Simulator
from envs.site import Site

WH = 3600.0  # J per Wh
MAX_CUTS = 10  # supporting lines per device and step (a subset of the hull's pieces: still valid)


@dataclass
class DayArrays:
    """One batch member's day as the planner sees it, per 1 s step ``t`` (0..n-1)."""

    surplus_w: np.ndarray  # (n,) PV - base load summed over phases at the end of step t, W
    plugged: np.ndarray  # (n, S) 1 where the slave may run during step t (EV plugged; 1 otherwise)
    draw_w: np.ndarray  # (n, S) draw from the slave's tank during step t, W
    fill0: np.ndarray  # (S,) initial fill: share of the tank (tanks), kWh wanted (EV)
    params: np.ndarray  # (S, SP_SIZE) envs/dispatch.py's slave table

    @property
    def n(self) -> int:
        return int(self.surplus_w.shape[0])


def day_arrays(sim: Simulator, b: int = 0) -> DayArrays:
    """The exogenous day of batch member ``b`` of a simulator just reset (``sim.t == 0``)."""
    if sim.t != 0:
        raise RuntimeError(f"day_arrays: the simulator must be at step 0 (just reset), it is at {sim.t}")
    n = sim.length_s
    return DayArrays(
        surplus_w=sim.window_surplus_w()[b],
        plugged=(sim.slave_exo[b, 1 : n + 1, :, 0] > 0.5).astype(np.float64),
        draw_w=sim.slave_exo[b, 1 : n + 1, :, 1].copy(),
        fill0=sim.ss[b, :, SS_FILL].copy(),
        params=sim.params.copy(),
    )


def _blocks(x: np.ndarray, dt: int, fill: float = 0.0) -> np.ndarray:
    """(n, ...) -> (K, dt, ...) padded with ``fill``."""
    n = x.shape[0]
    k = -(-n // dt)
    pad = np.full((k * dt - n, *x.shape[1:]), fill)
    return np.concatenate([x, pad]).reshape(k, dt, *x.shape[1:])


class _Model:
    """A tiny sparse-model builder for scipy.optimize.milp."""

    def __init__(self) -> None:
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.cost: list[np.ndarray] = []
        self.integ: list[np.ndarray] = []
        self.n = 0
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.rlo: list[float] = []
        self.rhi: list[float] = []

    def var(self, size: int, lb=0.0, ub=np.inf, cost=0.0, integer=False) -> np.ndarray:
        idx = np.arange(self.n, self.n + size)
        self.n += size
        self.lb.append(np.broadcast_to(np.asarray(lb, float), (size,)).copy())
        self.ub.append(np.broadcast_to(np.asarray(ub, float), (size,)).copy())
        self.cost.append(np.broadcast_to(np.asarray(cost, float), (size,)).copy())
        self.integ.append(np.full(size, 1 if integer else 0))
        return idx

    def row(self, terms: list[tuple[int, float]], lo: float = -np.inf, hi: float = np.inf) -> None:
        r = len(self.rlo)
        for c, v in terms:
            self.rows.append(r)
            self.cols.append(int(c))
            self.vals.append(float(v))
        self.rlo.append(lo)
        self.rhi.append(hi)

    def solve(self, time_limit: float, mip_rel_gap: float):
        a = sparse.csr_array((self.vals, (self.rows, self.cols)), shape=(len(self.rlo), self.n))
        integ = np.concatenate(self.integ)
        t0 = time.perf_counter()
        res = milp(
            np.concatenate(self.cost), integrality=integ,
            bounds=Bounds(np.concatenate(self.lb), np.concatenate(self.ub)),
            constraints=LinearConstraint(a, np.asarray(self.rlo), np.asarray(self.rhi)),
            options={"time_limit": time_limit, "mip_rel_gap": mip_rel_gap, "presolve": True},
        )  # fmt: skip
        return res, time.perf_counter() - t0, a.shape


def _ev_cuts(s: np.ndarray, pmin: float, pmax: float) -> list[tuple[float, float]]:
    """Supporting lines ``import >= a + b * E`` (Wh) of the least import of an EV delivering E in a step
    whose plugged seconds have surplus ``s`` (W): the convex hull of off / on in [pmin, pmax] per second."""
    if s.size == 0:
        return []
    free = np.minimum(s[s >= pmin], pmax).sum()
    sub = np.sort(s[s < pmin])[::-1]  # turn-on items, cheapest (sunniest) first
    e_cum = free + pmin * np.arange(sub.size + 1)
    c_cum = np.concatenate([[0.0], np.cumsum(pmin - sub)])
    slopes = (pmin - sub) / pmin
    picks = np.linspace(0, sub.size - 1, min(MAX_CUTS, sub.size)).round().astype(int)
    pick = np.unique(picks) if sub.size else ()
    lines = [(c_cum[i] - slopes[i] * e_cum[i], slopes[i]) for i in pick if slopes[i] > 0]
    lines.append((c_cum[-1] - e_cum[-1], 1.0))  # beyond every turn-on item: each extra W-s imports
    return [(a / WH, b) for a, b in lines]


def _hp_cuts(s: np.ndarray, power: float, interval: bool) -> list[tuple[float, float]]:
    """Lines ``import >= a + b * E`` (Wh) for a heat pump delivering E (= power x on-seconds) in a step with
    surplus ``s``: lower convex hull of the least import of n on-seconds (one interval if ``interval``)."""
    a = np.clip(power - s, 0.0, None)
    n = a.size
    if n == 0:
        return []
    if interval:
        cs = np.concatenate([[0.0], np.cumsum(a)])
        c = np.array([0.0] + [float((cs[k:] - cs[:-k]).min()) for k in range(1, n + 1)])
    else:
        c = np.concatenate([[0.0], np.cumsum(np.sort(a))])
    # lower convex hull of (k, c[k]) (monotone chain)
    hull: list[int] = []
    for k in range(n + 1):
        while len(hull) >= 2:
            k1, k2 = hull[-2], hull[-1]
            if (c[k2] - c[k1]) * (k - k1) >= (c[k] - c[k1]) * (k2 - k1):
                hull.pop()
            else:
                break
        hull.append(k)
    edges = [(hull[i], hull[i + 1]) for i in range(len(hull) - 1)]
    edges = [(k1, k2) for k1, k2 in edges if c[k2] > c[k1] + 1e-9]
    if len(edges) > MAX_CUTS:
        edges = [edges[i] for i in np.unique(np.linspace(0, len(edges) - 1, MAX_CUTS).round().astype(int))]
    lines = []
    for k1, k2 in edges:
        slope = (c[k2] - c[k1]) / (k2 - k1) / power  # import per unit energy
        lines.append(((c[k1] - slope * power * k1) / WH, slope))
    return lines


@dataclass
class BoundResult:
    """What :func:`lower_bound` and :func:`solve_plan` report (kWh, s)."""

    export_kwh: float
    import_kwh: float
    status: str
    solve_s: float
    mip_gap: float = 0.0
    shape: tuple[int, int] = (0, 0)
    extra: dict = field(default_factory=dict)

    @property
    def wasted_kwh(self) -> float:
        return self.export_kwh + self.import_kwh


def lower_bound(
    day: DayArrays, dt_s: int = 60, objective: str = "export", import_cap_kwh: float | None = None,
    time_limit: float = 120.0,
) -> BoundResult:  # fmt: skip
    """Least export (``objective='export'``, optionally with controlled import <= ``import_cap_kwh``) or
    least export + controlled import (``'wasted'``) that any controller of the real site can reach on
    ``day`` (see the module docstring for why every real trajectory is feasible)."""
    if objective not in ("export", "wasted"):
        raise ValueError(f"objective: 'export' or 'wasted', got {objective!r}")
    p = day.params
    n_s = p.shape[0]
    sp = _blocks(np.clip(day.surplus_w, 0.0, None), dt_s)  # (K, dt)
    valid = _blocks(np.ones(day.n), dt_s)
    plug = _blocks(day.plugged, dt_s)  # (K, dt, S)
    draw = _blocks(day.draw_w, dt_s).sum(1) / WH  # (K, S) Wh
    k_n = sp.shape[0]
    length = valid.sum(1)
    cap_t = (plug * p[:, SP_MAX_W]).sum(-1)  # (K, dt) power available each second
    ucap = np.minimum(sp, cap_t).sum(1) / WH
    sp_wh_total = sp.sum() / WH
    m = _Model()
    w_imp = 1.0 if objective == "wasted" else 1e-4
    u = m.var(k_n, 0.0, ucap, cost=-(1.0 + w_imp))  # export = S+ - u, import = sum e - u
    e_vars = []
    for s in range(n_s):
        kind, pmax = int(p[s, SP_KIND]), p[s, SP_MAX_W]
        e = m.var(k_n, 0.0, pmax * plug[:, :, s].sum(1) / WH, cost=w_imp)
        e_vars.append(e)
    imp_terms = lambda k: [(e_vars[s][k], 1.0) for s in range(n_s)] + [(u[k], -1.0)]  # noqa: E731
    for k in range(k_n):
        m.row(imp_terms(k), lo=0.0)  # u <= sum e
    for s in range(n_s):
        kind, pmax, pmin, tank = int(p[s, SP_KIND]), p[s, SP_MAX_W], p[s, SP_MIN_W], p[s, SP_TANK_J] / WH
        e = e_vars[s]
        for k in range(k_n):
            on = plug[k, :, s] > 0.5
            if kind == KIND_EV:
                lines = _ev_cuts(sp[k][on], max(pmin, 1e-6), pmax)
            elif kind == KIND_HEAT_PUMP:
                lines = _hp_cuts(sp[k][valid[k] > 0.5], pmax, p[s, SP_MIN_OFF] >= dt_s)
            else:
                lines = [(-np.minimum(sp[k], pmax).sum() / WH, 1.0)]
            for a, b in lines:  # sum e - u >= a + b e_s
                terms = imp_terms(k)
                terms.append((e[k], -b))
                m.row(terms, lo=a)
        if kind == KIND_EV:
            m.row([(i, 1.0) for i in e], hi=day.fill0[s] * 1000.0 + pmax / WH)
        elif tank > 0:
            level = m.var(k_n, 0.0, tank)
            unmet = m.var(k_n)
            spill = None
            if kind == KIND_HEAT_PUMP:
                window = int((p[s, SP_MIN_OFF] + 1) // dt_s)
                if window >= 1:
                    spill = m.var(k_n, 0.0, pmax / WH)
                    for k in range(k_n):
                        m.row([(spill[j], 1.0) for j in range(k, min(k + window, k_n))], hi=pmax / WH)
                else:
                    spill = m.var(k_n, 0.0, pmax * length / 2 / WH)
            for k in range(k_n):
                prev = [(level[k - 1], -1.0)] if k else []
                rhs = -draw[k, s] + (day.fill0[s] * tank if k == 0 else 0.0)
                terms = [(level[k], 1.0), *prev, (e[k], -1.0), (unmet[k], -1.0)]
                if spill is not None:
                    terms.append((spill[k], 1.0))
                m.row(terms, lo=rhs, hi=rhs)
    if import_cap_kwh is not None:
        terms = []
        for k in range(k_n):
            terms += imp_terms(k)
        m.row(terms, hi=import_cap_kwh * 1000.0)
    res, secs, shape = m.solve(time_limit, 0.0)
    if res.x is None:
        return BoundResult(math.nan, math.nan, f"{res.status}: {res.message}", secs, shape=shape)
    x = res.x
    useful = x[u].sum()
    absorbed = sum(x[e].sum() for e in e_vars)
    return BoundResult(
        export_kwh=(sp_wh_total - useful) / 1000.0, import_kwh=(absorbed - useful) / 1000.0,
        status="optimal" if res.status == 0 else f"{res.status}: {res.message}", solve_s=secs, shape=shape,
        extra={"device_kwh": [float(x[e].sum() / 1000.0) for e in e_vars]},
    )  # fmt: skip


@dataclass
class Plan:
    """Per step of ``dt_s`` seconds: heat pump on (0/1) and EV level (W, 0 = off), per slave (K, S)."""

    dt_s: int
    power_w: np.ndarray  # (K, S) planned power of the lumpy devices (EV, heat pump); water heaters: 0
    wh_wh: np.ndarray  # (K, S) planned water-heater energy (Wh), for reports
    result: BoundResult


def _tangents(s: np.ndarray) -> list[tuple[float, float, float]]:
    """Tangent points of f(L) = sum_t (s_t - L)+ / 3600 (Wh): (q, f(q), f'(q+)) at quantiles of ``s``."""
    if s.size == 0:
        return [(0.0, 0.0, 0.0)]
    qs = np.unique(np.concatenate([[0.0], np.quantile(s, np.linspace(0.0, 1.0, 9))]))
    return [(float(q), float(np.clip(s - q, 0.0, None).sum() / WH), -float((s > q).sum()) / WH) for q in qs]


def solve_plan(
    day: DayArrays, dt_s: int = 60, import_weight: float = 1.0, time_limit: float = 60.0,
    mip_rel_gap: float = 0.01, switch_s: int = 300,
) -> Plan:  # fmt: skip
    """The day's MILP plan on the real devices (see the module docstring): minimise the model's export +
    ``import_weight`` x its controlled import. Heat pumps on/off with minimum on and off times; EVs off or in
    [min, max] in steps where they are plugged throughout; water heaters trim the rest. On/off decisions
    (heat pump, EV) are taken per ``switch_s`` seconds (a multiple of ``dt_s``): far fewer binaries, and the
    heat pump's minimum times hold by construction when ``switch_s`` covers them."""
    if switch_s % dt_s:
        raise ValueError(f"switch_s ({switch_s}) must be a multiple of dt_s ({dt_s})")
    per = switch_s // dt_s
    p = day.params
    n_s = p.shape[0]
    sp = _blocks(np.clip(day.surplus_w, 0.0, None), dt_s)
    valid = _blocks(np.ones(day.n), dt_s) > 0.5
    plug = _blocks(day.plugged, dt_s)
    draw = _blocks(day.draw_w, dt_s).sum(1) / WH
    k_n = sp.shape[0]
    length = valid.sum(1)
    sunny = sp.max(1) > 0.0
    n_seg = -(-k_n // per)
    kinds = [int(p[s, SP_KIND]) for s in range(n_s)]
    wh_power = sum(p[s, SP_MAX_W] for s in range(n_s) if kinds[s] not in (KIND_EV, KIND_HEAT_PUMP))
    m = _Model()
    level_terms: list[list[tuple[int, float]]] = [[] for _ in range(k_n)]  # L_k = sum of lumpy powers (W)
    wh_terms: list[list[tuple[int, float]]] = [[] for _ in range(k_n)]  # water-heater energy (Wh)
    power_idx: dict[int, np.ndarray] = {}
    wh_idx: dict[int, np.ndarray] = {}
    for s in range(n_s):
        kind, pmax, pmin, tank = kinds[s], p[s, SP_MAX_W], p[s, SP_MIN_W], p[s, SP_TANK_J] / WH
        energy_terms: list[list[tuple[int, float]]] = [[] for _ in range(k_n)]
        if kind == KIND_HEAT_PUMP:
            seg_ok = np.array([sunny[j : j + per].any() for j in range(0, k_n, per)])
            on = m.var(n_seg, 0.0, seg_ok.astype(float), integer=True)
            start = m.var(n_seg, 0.0, 1.0, cost=1e-3)
            stop = m.var(n_seg, 0.0, 1.0)
            mu, md = math.ceil(p[s, SP_MIN_ON] / switch_s), math.ceil(p[s, SP_MIN_OFF] / switch_s)
            for g in range(n_seg):
                prev = [(on[g - 1], -1.0)] if g else []
                m.row([(start[g], 1.0), (on[g], -1.0), *[(i, -c) for i, c in prev]], lo=0.0)  # on - prev
                m.row([(stop[g], 1.0), (on[g], 1.0), *prev], lo=0.0)  # stop >= prev - on
                if mu > 1:
                    window = range(max(0, g - mu + 1), g + 1)
                    m.row([(start[j], 1.0) for j in window] + [(on[g], -1.0)], hi=0.0)
                if md > 1:
                    window = range(max(0, g - md + 1), g + 1)
                    m.row([(stop[j], 1.0) for j in window] + [(on[g], 1.0)], hi=1.0)
            for k in range(k_n):
                level_terms[k].append((on[k // per], pmax))
                energy_terms[k].append((on[k // per], pmax * length[k] / WH))
            power_idx[s] = on[np.arange(k_n) // per]
        elif kind == KIND_EV:
            ok = (plug[:, :, s].sum(1) >= length) & sunny & (length > 0)
            seg_ok = np.array([ok[j : j + per].all() for j in range(0, k_n, per)])
            z = m.var(n_seg, 0.0, seg_ok.astype(float), integer=True)
            pw = m.var(k_n, 0.0, pmax * ok)
            for k in range(k_n):
                m.row([(pw[k], 1.0), (z[k // per], -pmin)], lo=0.0)
                m.row([(pw[k], 1.0), (z[k // per], -pmax)], hi=0.0)
                level_terms[k].append((pw[k], 1.0))
            m.row([(pw[k], length[k] / WH) for k in range(k_n)], hi=day.fill0[s] * 1000.0)
            power_idx[s] = pw
        else:
            ew = m.var(k_n, 0.0, pmax * length / WH)
            for k in range(k_n):
                wh_terms[k].append((ew[k], 1.0))
                energy_terms[k].append((ew[k], 1.0))
            wh_idx[s] = ew
        if tank > 0 and kind != KIND_EV:
            level = m.var(k_n, 0.0, tank)
            unmet = m.var(k_n)
            for k in range(k_n):
                prev = [(level[k - 1], -1.0)] if k else []
                rhs = -draw[k, s] + (day.fill0[s] * tank if k == 0 else 0.0)
                terms = [(level[k], 1.0), *prev, (unmet[k], -1.0)] + [(i, -c) for i, c in energy_terms[k]]
                m.row(terms, lo=rhs, hi=rhs)
    x_pre = m.var(k_n)  # export before the water heaters trim
    y = m.var(k_n, cost=1.0)  # export
    imp = m.var(k_n, cost=import_weight)
    for k in range(k_n):
        lev = level_terms[k]
        if not sunny[k]:  # no surplus: no export, and anything on imports
            m.row([(imp[k], 1.0)] + [(i, -c * length[k] / WH) for i, c in lev], lo=0.0)
            continue
        for q, fq, df in _tangents(sp[k][valid[k]]):
            # x_pre >= f(q) + f'(q) (L - q);  y >= f(q) + f'(q) (L + W - q);  imp >= g(q) + g'(q) (L - q)
            m.row([(x_pre[k], 1.0)] + [(i, -df * c) for i, c in lev], lo=fq - df * q)
            m.row([(y[k], 1.0)] + [(i, -df * c) for i, c in lev], lo=fq + df * (wh_power - q))
            dg = df + length[k] / WH
            gq = fq - sp[k].sum() / WH + q * length[k] / WH
            m.row([(imp[k], 1.0)] + [(i, -dg * c) for i, c in lev], lo=gq - dg * q)
        m.row([(y[k], 1.0), (x_pre[k], -1.0), *wh_terms[k]], lo=0.0)  # y >= x_pre - e_wh
    res, secs, shape = m.solve(time_limit, mip_rel_gap)
    if res.x is None:
        raise RuntimeError(f"solve_plan: HiGHS found no plan ({res.status}: {res.message})")
    x = np.round(res.x, 9)
    power = np.zeros((k_n, n_s))
    whe = np.zeros((k_n, n_s))
    for s, idx in power_idx.items():
        power[:, s] = (x[idx] > 0.5) * p[s, SP_MAX_W] if kinds[s] == KIND_HEAT_PUMP else x[idx]
    for s, idx in wh_idx.items():
        whe[:, s] = x[idx]
    result = BoundResult(
        export_kwh=float(x[y].sum() / 1000.0), import_kwh=float(x[imp].sum() / 1000.0),
        status="optimal" if res.status == 0 else f"{res.status}: {res.message}", solve_s=secs,
        mip_gap=float(getattr(res, "mip_gap", 0.0) or 0.0), shape=shape,
    )  # fmt: skip
    return Plan(dt_s, power, whe, result)


class PlanController:
    """Executes :func:`solve_plan`'s day plan in the real simulator, with the oracle's privileges (foresight
    of the day, perfect link; bound by ``bind`` as envs/rollout.py does for the oracle). Heat pumps and EVs
    follow the plan; water heaters absorb the next second's true surplus left by them (greedy). Needs one
    slave per phase (the default site and envs/site_sampler.py's sites): targets are then slave commands."""

    name = "plan"
    needs_perfect_link = True

    def __init__(self, dt_s: int = 60, import_weight: float = 1.0, time_limit: float = 60.0,
                 mip_rel_gap: float = 0.01, switch_s: int = 300, ev_trim: bool = False) -> None:  # fmt: skip
        self.dt_s, self.import_weight, self.switch_s = dt_s, import_weight, switch_s
        self.ev_trim = ev_trim
        """True: in its planned on-steps the EV also follows the second's surplus within [min, max] (up when
        the water heater is saturated, down when the surplus falls below the planned levels). Default site,
        seed 21: broken clouds 3.02 / 0.77 kWh (off: 3.00 / 0.72), overcast 0.35 / 0.24 (off: 0.40 / 0.24)."""
        self.time_limit, self.mip_rel_gap = time_limit, mip_rel_gap
        self.sim: Simulator | None = None
        self.plan: Plan | None = None

    def prepare_site(self, site: Site) -> Site:
        phases = [sl.phase for sl in site.slaves]
        if len(set(phases)) != len(phases):
            raise ValueError(f"PlanController: site {site.name!r} has several slaves on one phase ({phases})")
        return site

    def bind(self, sim: Simulator) -> None:
        self.sim = sim
        self.day = day_arrays(sim)
        self.plan = solve_plan(
            self.day, self.dt_s, self.import_weight, self.time_limit, self.mip_rel_gap, self.switch_s
        )

    def reset(self, batch: int = 1) -> None:
        if batch != 1:
            raise ValueError("PlanController runs one episode at a time")

    def _predict(self, s: int, cmd: float) -> float:
        """The power slave ``s`` will draw during this step if sent ``cmd`` now (the kernel's rules)."""
        sim, p, t = self.sim, self.day.params, self.sim.t
        ss = sim.ss[0, s]
        sent = ss[SS_SENT_VAL]
        changed = abs(cmd - sent) > sim.consts[0] or ((cmd > 0.0) != (sent > 0.0))
        sp = cmd if changed else sent
        kind, pmax = int(p[s, SP_KIND]), p[s, SP_MAX_W]
        if kind == KIND_HEAT_PUMP:
            on = ss[SS_IS_ON] > 0.5
            want = sp >= 0.5 * pmax
            if on and not want and ss[SS_TIS] < p[s, SP_MIN_ON]:
                want = True
            if not on and want and ss[SS_TIS] < p[s, SP_MIN_OFF]:
                want = False
            if p[s, SP_TANK_J] > 0 and ss[SS_FILL] >= 1.0:
                want = False
            return pmax if want else 0.0
        pmin, prev, ramp = p[s, SP_MIN_W], ss[SS_APPLIED], p[s, SP_RAMP]
        if kind == KIND_EV:
            if self.day.plugged[t, s] < 0.5 or ss[SS_FILL] <= 0.0 or sp < pmin:
                return 0.0
            return pmin if prev < pmin else min(max(prev + min(max(sp - prev, -ramp), ramp), pmin), pmax)
        return min(max(prev + min(max(sp - prev, -ramp), ramp), 0.0), pmax)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.sim is None or self.plan is None:
            raise RuntimeError("PlanController.bind(sim) must be called before act()")
        t = self.sim.t
        k = min(t // self.plan.dt_s, self.plan.power_w.shape[0] - 1)
        p = self.day.params
        targets = np.zeros((1, 3))
        residual = self.day.surplus_w[t] - self.sim.consts[2]  # next second's true surplus - setpoint
        trimmers, evs = [], []
        for s in range(p.shape[0]):
            kind = int(p[s, SP_KIND])
            if kind in (KIND_EV, KIND_HEAT_PUMP):
                cmd = float(self.plan.power_w[k, s])
                if self.ev_trim and kind == KIND_EV and cmd > 0.0:
                    evs.append((s, cmd))
                    continue
                targets[0, int(p[s, SP_PHASE])] = cmd
                residual -= self._predict(s, cmd)
            else:
                trimmers.append(s)
        room = sum(p[s, SP_MAX_W] for s in trimmers)
        for s, cmd in evs:  # follow the surplus left after the planned levels, beyond the water heaters' room
            rest = residual - cmd
            want = cmd + (rest if rest < 0.0 else max(rest - room, 0.0))
            cmd = float(np.clip(want, p[s, SP_MIN_W], p[s, SP_MAX_W]))
            targets[0, int(p[s, SP_PHASE])] = cmd
            residual -= self._predict(s, cmd)
        for s in trimmers:
            cmd = float(np.clip(residual, 0.0, p[s, SP_MAX_W]))
            targets[0, int(p[s, SP_PHASE])] = cmd
            residual -= cmd
        return targets
