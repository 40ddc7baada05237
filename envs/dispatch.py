"""Per-phase power targets -> per-slave commands, honouring each slave's limits and availability.

The seed's dispatcher split a phase's target equally over its slaves, which asks an EV charger for
less than its 6 A minimum and a heat pump for half its compressor. This one fills each phase's target
in order of granularity:

1. heat pumps (on/off at ``max_power_w``): on when the remaining target covers most of the unit's
   power (90 % to start, 50 % to stay on), within the unit's minimum on and off times;
2. EV chargers (off or ``min_power_w``..``max_power_w``): on when the remainder covers the minimum
   (to stay on: 75 % of it, to avoid flapping around the threshold);
3. water heaters (continuous ``0..max_power_w``): take what is left.

Unavailable slaves (EV not plugged or full, tank full) get 0 W. The simulator and the edge runtime call
this same kernel. :func:`allocate_to_phases` spreads a total over the phases, for the PI and the oracle.
"""

from __future__ import annotations

import numpy as np

from envs.jit import kernel
from envs.site import N_PHASES, Site

KIND_WATER_HEATER, KIND_EV, KIND_HEAT_PUMP = 0, 1, 2
HEAT_PUMP_START, HEAT_PUMP_STAY = 0.9, 0.5
"""A heat pump starts when its phase's remaining target covers the first share of its power and stays on
while it covers the second."""
EV_STAY = 0.75
"""An EV charger starts at its minimum power and stays on down to this share of it."""
KIND_CODES = {"water_heater": KIND_WATER_HEATER, "ev_charger": KIND_EV, "heat_pump": KIND_HEAT_PUMP}

# Columns of the slave parameter table (S, SP_SIZE).
SP_KIND, SP_PHASE, SP_MIN_W, SP_MAX_W, SP_RAMP, SP_TANK_J, SP_MIN_ON, SP_MIN_OFF, SP_ORDER = range(9)
SP_SIZE = 9


def slave_table(site: Site) -> np.ndarray:
    """The site's slaves as a float table (S, SP_SIZE) for the kernels; SP_ORDER gives dispatch order."""
    rows = []
    for sl in site.slaves:
        kind = KIND_CODES[sl.kind]
        rows.append(
            [kind, sl.phase - 1, sl.min_power_w, sl.max_power_w, sl.ramp_w_per_s,
             sl.tank_kwh * 3.6e6, sl.min_on_s, sl.min_off_s, 0.0]
        )
    table = np.asarray(rows, dtype=np.float64)
    # Heat pumps first, then EVs, then water heaters; stable within a kind.
    priority = {KIND_HEAT_PUMP: 0, KIND_EV: 1, KIND_WATER_HEATER: 2}
    order = sorted(range(len(rows)), key=lambda s: (priority[int(table[s, SP_KIND])], s))
    table[:, SP_ORDER] = order
    return table


@kernel
def dispatch_row(
    targets_w: np.ndarray,
    available: np.ndarray,
    is_on: np.ndarray,
    time_in_state_s: np.ndarray,
    params: np.ndarray,
    out_cmd_w: np.ndarray,
) -> None:
    """Turn one site's per-phase targets (3,) into slave commands ``out_cmd_w`` (S,), in W.

    Args:
        targets_w: Per-phase targets, W (>= 0; negative treated as 0).
        available: (S,) 1 if the slave can take power now, else 0.
        is_on: (S,) 1 if the slave currently draws power (on/off state for hysteresis and min times).
        time_in_state_s: (S,) seconds since the slave last switched on or off.
        params: (S, SP_SIZE) from :func:`slave_table`.
        out_cmd_w: (S,) written: each command lies in the slave's feasible set.
    """
    remaining = np.empty(3)
    for p in range(3):
        remaining[p] = max(targets_w[p], 0.0)
    for k in range(params.shape[0]):
        s = int(params[k, SP_ORDER])
        p = int(params[s, SP_PHASE])
        kind = int(params[s, SP_KIND])
        pmax = params[s, SP_MAX_W]
        cmd = 0.0
        if kind == KIND_HEAT_PUMP:
            on = is_on[s] > 0.5
            want = remaining[p] >= (HEAT_PUMP_STAY if on else HEAT_PUMP_START) * pmax and available[s] > 0.5
            if on and not want and time_in_state_s[s] < params[s, SP_MIN_ON]:
                want = True
            if not on and want and time_in_state_s[s] < params[s, SP_MIN_OFF]:
                want = False
            cmd = pmax if want else 0.0
        elif available[s] > 0.5:
            if kind == KIND_EV:
                pmin = params[s, SP_MIN_W]
                threshold = EV_STAY * pmin if is_on[s] > 0.5 else pmin
                if remaining[p] >= threshold:
                    cmd = min(max(remaining[p], pmin), pmax)
            else:
                cmd = min(remaining[p], pmax)
        out_cmd_w[s] = cmd
        remaining[p] = max(remaining[p] - cmd, 0.0)


def dispatch(
    targets_w: np.ndarray, available: np.ndarray, is_on: np.ndarray, time_in_state_s: np.ndarray,
    params: np.ndarray,
) -> np.ndarray:
    """Convenience wrapper of :func:`dispatch_row` returning a new (S,) command array."""
    out = np.zeros(params.shape[0])
    dispatch_row(
        np.asarray(targets_w, dtype=np.float64), np.asarray(available, dtype=np.float64),
        np.asarray(is_on, dtype=np.float64), np.asarray(time_in_state_s, dtype=np.float64), params, out,
    )
    return out


def start_power_w(site: Site) -> float:
    """The smallest target that starts one of the site's on/off or stepped devices under :func:`dispatch_row`:
    a heat pump's :data:`HEAT_PUMP_START` share of its power, an EV charger's minimum power; W (inf without
    such a device). The site's master knows it from its devices' settings."""
    starts = [HEAT_PUMP_START * sl.max_power_w if sl.kind == "heat_pump" else sl.min_power_w
              for sl in site.slaves if sl.kind in ("heat_pump", "ev_charger")]
    return float(min(starts, default=np.inf))


def allocate_to_phases(total_w: np.ndarray, export_w_phase: np.ndarray, available_w: np.ndarray) -> np.ndarray:
    """Spread a total controlled power over the phases.

    Each phase first takes up to its own export (which also balances the phases), then what is left goes
    to the phases with headroom, in proportion to it. Works on batches: ``total_w`` (...,),
    ``export_w_phase`` and ``available_w`` (..., 3). Returns (..., 3) with 0 <= out <= available.
    """
    total = np.clip(np.asarray(total_w, dtype=np.float64), 0.0, None)[..., None]
    avail = np.clip(np.asarray(available_w, dtype=np.float64), 0.0, None)
    own = np.minimum(np.clip(export_w_phase, 0.0, None), avail)
    own_sum = own.sum(-1, keepdims=True)
    first = own * np.minimum(1.0, total / np.where(own_sum > 0, own_sum, 1.0))
    rest = np.clip(total - first.sum(-1, keepdims=True), 0.0, None)
    room = avail - first
    room_sum = room.sum(-1, keepdims=True)
    second = room * np.minimum(1.0, rest / np.where(room_sum > 0, room_sum, 1.0))
    return first + second


assert N_PHASES == 3
