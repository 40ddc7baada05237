"""The export-control site simulator: a batch of independent site-days stepped together at 1 s.

One implementation serves the single gymnasium env (batch of 1) and the vectorised env (many days or
seeds at once). The step is one compiled kernel (:func:`_step_kernel`, see envs/jit.py) that, per site:

1. dispatches the per-phase targets to slave commands (envs/dispatch.py);
2. sends a command to a slave when it changes by more than the deadband, or resends it when it was not
   acknowledged within ``retry_after_s``; each command gets a lognormal delay or is lost;
3. delivers commands whose delay has elapsed at the end of the step (a command never takes effect
   before its delay; a slave ignores a command older than the one it applied, and acknowledges the
   ones it applies);
4. moves each slave's power toward its setpoint (ramp, tank full, EV plugged, heat-pump minimum times);
5. balances each phase: ``export = pv - base_load - controlled``;
6. reads the meters (noise, missing readings) and computes the state vector (envs/state_spec.py) and
   the reward terms (envs/reward.py).

Randomness (meter noise, missing readings, delays, losses) is drawn at reset from the caller's
generator, so a seed fixes an episode to the bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from envs.dispatch import (
    KIND_EV,
    KIND_HEAT_PUMP,
    KIND_WATER_HEATER,
    SP_KIND,
    SP_MAX_W,
    SP_MIN_OFF,
    SP_MIN_ON,
    SP_MIN_W,
    SP_PHASE,
    SP_RAMP,
    SP_TANK_J,
    dispatch_row,
    slave_table,
)
from envs.jit import kernel
from envs.profiles import DAY_S, DayProfile
from envs.site import Site
from envs.state_spec import N_FEATURES, N_SIGNALS, feature_row, new_kernel_state

# Slave state columns (B, S, SS_SIZE).
SS_SETPOINT, SS_APPLIED, SS_APPLIED_SEQ, SS_IS_ON, SS_TIS, SS_FILL = range(6)
SS_SENT_VAL, SS_SENT_SEQ, SS_SENT_STEP, SS_ACK_VAL, SS_ACK_SEQ, SS_AVAIL = range(6, 12)
SS_SIZE = 12
QUEUE = 16  # in-flight commands per slave: one send per step at most, delays <= 15 s
# Queue columns: arrival step (-1 = empty), value, seq, event index.
Q_ARRIVAL, Q_VALUE, Q_SEQ, Q_EVENT = range(4)
# Event columns (one row per command sent).
EV_SENT, EV_SLAVE, EV_VALUE, EV_SEQ, EV_DELAY, EV_APPLIED, EV_LOST = range(7)
EV_SIZE = 7
# Per-step outputs (B, OUT_SIZE).
O_REWARD, O_EXPORT, O_IMPORT_CTRL, O_CHANGES, O_IMBALANCE = range(5)
O_PV, O_BASE, O_CTRL, O_EXPORT_L, O_METER, O_METER_PV = 5, 8, 11, 14, 17, 20  # 3 columns each
OUT_SIZE = 23
EPOCH_2025 = 1_735_689_600  # 2025-01-01T00:00:00Z: simulated days are days of 2025


@kernel
def _slave_available(kind: int, exo_avail: float, fill: float, tank_j: float) -> float:
    if kind == KIND_WATER_HEATER or (kind == KIND_HEAT_PUMP and tank_j > 0.0):
        return 1.0 if fill < 0.999 else 0.0
    if kind == KIND_EV:
        return 1.0 if exo_avail > 0.5 and fill > 0.0 else 0.0
    return 1.0


@kernel
def _step_kernel(
    t: int,
    targets: np.ndarray,  # (B, 3) W
    params: np.ndarray,  # (S, SP_SIZE)
    consts: np.ndarray,  # deadband, retry_after_s, setpoint, perfect_link, record
    weights: np.ndarray,  # (4,) reward weights
    exo: np.ndarray,  # (B, T+1, 6) pv l1..3, base l1..3
    slave_exo: np.ndarray,  # (B, T+1, S, 2) available, draw W
    meter_rnd: np.ndarray,  # (B, T+1, 7) noise x6, missing flag
    link_rnd: np.ndarray,  # (B, T+1, S, 2) delay s, lost flag
    time0: np.ndarray,  # (B,) UTC time of step 0
    ss: np.ndarray,  # (B, S, SS_SIZE)
    queue: np.ndarray,  # (B, S, QUEUE, 4)
    kstate: np.ndarray,  # (B, KS_SIZE)
    ring: np.ndarray,  # (B, 2, RING)
    events: np.ndarray,  # (B, E, EV_SIZE)
    n_events: np.ndarray,  # (B,) int64
    obs: np.ndarray,  # (B, F) out
    out: np.ndarray,  # (B, OUT_SIZE) out
    slave_power: np.ndarray,  # (B, S) out
    sig: np.ndarray,  # (N_SIGNALS,) scratch
) -> None:
    n_slaves = params.shape[0]
    deadband, retry_after, setpoint = consts[0], consts[1], consts[2]
    perfect, record = consts[3] > 0.5, consts[4] > 0.5
    cmd = np.zeros(n_slaves)
    is_on = np.zeros(n_slaves)
    tis = np.zeros(n_slaves)
    avail = np.zeros(n_slaves)
    for b in range(targets.shape[0]):
        for s in range(n_slaves):
            is_on[s] = ss[b, s, SS_IS_ON]
            tis[s] = ss[b, s, SS_TIS]
            avail[s] = ss[b, s, SS_AVAIL]
        dispatch_row(targets[b], avail, is_on, tis, params, cmd)
        changes = 0
        # --- send
        for s in range(n_slaves):
            sent = ss[b, s, SS_SENT_VAL]
            changed = abs(cmd[s] - sent) > deadband or ((cmd[s] > 0.0) != (sent > 0.0))
            unacked = ss[b, s, SS_SENT_SEQ] > ss[b, s, SS_ACK_SEQ]
            retry = unacked and (t - ss[b, s, SS_SENT_STEP]) >= retry_after
            if not (changed or retry):
                continue
            value = cmd[s] if changed else sent
            changes += 1 if changed else 0
            seq = ss[b, s, SS_SENT_SEQ] + 1.0
            delay = link_rnd[b, t, s, 0]
            lost = link_rnd[b, t, s, 1] > 0.5
            if perfect:
                delay, lost = 0.0, False
            arrival = t + max(1, math.ceil(delay))
            slot = int(seq) % QUEUE
            e = n_events[b]
            if record and e < events.shape[1]:
                events[b, e, EV_SENT] = t
                events[b, e, EV_SLAVE] = s
                events[b, e, EV_VALUE] = value
                events[b, e, EV_SEQ] = seq
                events[b, e, EV_DELAY] = delay
                events[b, e, EV_APPLIED] = -1.0
                events[b, e, EV_LOST] = 1.0 if lost else 0.0
                n_events[b] = e + 1
            queue[b, s, slot, Q_ARRIVAL] = -1.0 if lost else float(arrival)
            queue[b, s, slot, Q_VALUE] = value
            queue[b, s, slot, Q_SEQ] = seq
            queue[b, s, slot, Q_EVENT] = float(e) if record else -1.0
            ss[b, s, SS_SENT_VAL] = value
            ss[b, s, SS_SENT_SEQ] = seq
            ss[b, s, SS_SENT_STEP] = t
        # --- deliver at the end of the step (t + 1)
        for s in range(n_slaves):
            for q in range(QUEUE):
                arr = queue[b, s, q, Q_ARRIVAL]
                if arr < 0.0 or arr > t + 1:
                    continue
                queue[b, s, q, Q_ARRIVAL] = -1.0
                if queue[b, s, q, Q_SEQ] <= ss[b, s, SS_APPLIED_SEQ]:
                    continue  # older than what the slave applied: dropped, not acknowledged
                ss[b, s, SS_SETPOINT] = queue[b, s, q, Q_VALUE]
                ss[b, s, SS_APPLIED_SEQ] = queue[b, s, q, Q_SEQ]
                ss[b, s, SS_ACK_VAL] = queue[b, s, q, Q_VALUE]
                ss[b, s, SS_ACK_SEQ] = queue[b, s, q, Q_SEQ]
                ev = int(queue[b, s, q, Q_EVENT])
                if ev >= 0:
                    events[b, ev, EV_APPLIED] = t + 1
        # --- slave physics over [t, t+1]
        ctrl1 = 0.0
        ctrl2 = 0.0
        ctrl3 = 0.0
        avail_w1 = 0.0
        avail_w2 = 0.0
        avail_w3 = 0.0
        acked1 = 0.0
        acked2 = 0.0
        acked3 = 0.0
        for s in range(n_slaves):
            kind = int(params[s, SP_KIND])
            pmax = params[s, SP_MAX_W]
            ramp = params[s, SP_RAMP]
            prev = ss[b, s, SS_APPLIED]
            sp = ss[b, s, SS_SETPOINT]
            fill = ss[b, s, SS_FILL]
            plugged = slave_exo[b, t + 1, s, 0]
            was_on = ss[b, s, SS_IS_ON] > 0.5
            if kind == KIND_HEAT_PUMP:
                on = was_on
                want = sp >= 0.5 * pmax
                if on and not want and ss[b, s, SS_TIS] < params[s, SP_MIN_ON]:
                    want = True
                if not on and want and ss[b, s, SS_TIS] < params[s, SP_MIN_OFF]:
                    want = False
                tank = params[s, SP_TANK_J]
                if tank > 0.0:  # thermal buffer: the unit's own thermostat stops it when full
                    draw = slave_exo[b, t + 1, s, 1]
                    if fill >= 1.0:
                        want = False
                    power = pmax if want else 0.0
                    fill = min(max(fill + (power - draw) / tank, 0.0), 1.0)
                else:
                    power = pmax if want else 0.0
            elif kind == KIND_EV:
                pmin = params[s, SP_MIN_W]
                if plugged < 0.5 or fill <= 0.0 or sp < pmin:
                    power = 0.0
                elif prev < pmin:
                    power = pmin  # contactor closes at 6 A
                else:
                    power = min(max(prev + min(max(sp - prev, -ramp), ramp), pmin), pmax)
                fill = max(fill - power / 3.6e6, 0.0)
            else:  # water heater
                tank = params[s, SP_TANK_J]
                draw = slave_exo[b, t + 1, s, 1]
                power = min(max(prev + min(max(sp - prev, -ramp), ramp), 0.0), pmax)
                power = min(power, (1.0 - fill) * tank + draw)  # thermostat: a full tank takes no more
                fill = min(max(fill + (power - draw) / tank, 0.0), 1.0)
            ss[b, s, SS_FILL] = fill
            ss[b, s, SS_APPLIED] = power
            now_on = power > 0.0
            if now_on != was_on:
                ss[b, s, SS_IS_ON] = 1.0 if now_on else 0.0
                ss[b, s, SS_TIS] = 0.0
            else:
                ss[b, s, SS_TIS] += 1.0
            av = _slave_available(kind, plugged, fill, params[s, SP_TANK_J])
            ss[b, s, SS_AVAIL] = av
            slave_power[b, s] = power
            ph = int(params[s, SP_PHASE])
            if ph == 0:
                ctrl1 += power
                avail_w1 += av * pmax
                acked1 += ss[b, s, SS_ACK_VAL]
            elif ph == 1:
                ctrl2 += power
                avail_w2 += av * pmax
                acked2 += ss[b, s, SS_ACK_VAL]
            else:
                ctrl3 += power
                avail_w3 += av * pmax
                acked3 += ss[b, s, SS_ACK_VAL]
        # --- phase balance and meters at t + 1
        pv1, pv2, pv3 = exo[b, t + 1, 0], exo[b, t + 1, 1], exo[b, t + 1, 2]
        x1 = pv1 - exo[b, t + 1, 3] - ctrl1
        x2 = pv2 - exo[b, t + 1, 4] - ctrl2
        x3 = pv3 - exo[b, t + 1, 5] - ctrl3
        missing = meter_rnd[b, t + 1, 6] > 0.5
        nan = math.nan
        sig[0] = nan if missing else x1 + meter_rnd[b, t + 1, 0]
        sig[1] = nan if missing else x2 + meter_rnd[b, t + 1, 1]
        sig[2] = nan if missing else x3 + meter_rnd[b, t + 1, 2]
        sig[3] = nan if missing else pv1 + meter_rnd[b, t + 1, 3]
        sig[4] = nan if missing else pv2 + meter_rnd[b, t + 1, 4]
        sig[5] = nan if missing else pv3 + meter_rnd[b, t + 1, 5]
        sig[6] = targets[b, 0]
        sig[7] = targets[b, 1]
        sig[8] = targets[b, 2]
        sig[9] = acked1
        sig[10] = acked2
        sig[11] = acked3
        sig[12] = avail_w1
        sig[13] = avail_w2
        sig[14] = avail_w3
        sig[15] = setpoint
        sig[16] = time0[b] + t + 1
        feature_row(sig, kstate[b], ring[b], obs[b])
        # --- reward terms (kW)
        net = x1 + x2 + x3
        ctrl = ctrl1 + ctrl2 + ctrl3
        export_pos = max(net, 0.0)
        import_ctrl = max(-net, 0.0) - max(-(net + ctrl), 0.0)
        mean_x = net / 3.0
        imb = math.sqrt(((x1 - mean_x) ** 2 + (x2 - mean_x) ** 2 + (x3 - mean_x) ** 2) / 3.0)
        out[b, O_REWARD] = -(
            weights[0] * export_pos / 1000.0
            + weights[1] * import_ctrl / 1000.0
            + weights[2] * changes
            + weights[3] * imb / 1000.0
        )
        out[b, O_EXPORT] = export_pos
        out[b, O_IMPORT_CTRL] = import_ctrl
        out[b, O_CHANGES] = changes
        out[b, O_IMBALANCE] = imb
        out[b, O_PV], out[b, O_PV + 1], out[b, O_PV + 2] = pv1, pv2, pv3
        out[b, O_BASE], out[b, O_BASE + 1], out[b, O_BASE + 2] = exo[b, t + 1, 3], exo[b, t + 1, 4], exo[b, t + 1, 5]
        out[b, O_CTRL], out[b, O_CTRL + 1], out[b, O_CTRL + 2] = ctrl1, ctrl2, ctrl3
        out[b, O_EXPORT_L], out[b, O_EXPORT_L + 1], out[b, O_EXPORT_L + 2] = x1, x2, x3
        out[b, O_METER], out[b, O_METER + 1], out[b, O_METER + 2] = sig[0], sig[1], sig[2]
        out[b, O_METER_PV], out[b, O_METER_PV + 1], out[b, O_METER_PV + 2] = sig[3], sig[4], sig[5]


@dataclass
class Window:
    """The part of a day an episode covers."""

    start_s: int
    length_s: int


class Simulator:
    """A batch of site-days, stepped together by :func:`_step_kernel`.

    Args:
        site: The site (all batch members share it).
        deadband_w / setpoint_w etc. come from ``site.control``; ``perfect_link`` makes every command
            arrive at the end of its step, never lost (the oracle's privilege).
        record_events: Keep a row per command sent (for logs and tests); off for training speed.
    """

    def __init__(self, site: Site, weights: np.ndarray, perfect_link: bool = False, record_events: bool = False):
        self.site = site
        self.params = slave_table(site)
        self.n_slaves = len(site.slaves)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.consts = np.array(
            [site.control.deadband_w, site.link.retry_after_s, site.control.export_setpoint_w,
             1.0 if perfect_link else 0.0, 1.0 if record_events else 0.0]
        )
        self.record_events = record_events
        self._sig = np.zeros(N_SIGNALS)
        self.t = 0
        self.length_s = 0

    def reset(self, days: list[DayProfile], windows: list[Window], rngs: list[np.random.Generator]) -> np.ndarray:
        """Start one episode per (day, window, rng); returns the first observations (B, F)."""
        b = len(days)
        length = windows[0].length_s
        if any(w.length_s != length for w in windows):
            raise ValueError("all batch members must have the same window length")
        n_s, site = self.n_slaves, self.site
        self.length_s = length
        self.t = 0
        self.exo = np.empty((b, length + 1, 6))
        self.slave_exo = np.empty((b, length + 1, n_s, 2))
        self.meter_rnd = np.empty((b, length + 1, 7))
        self.link_rnd = np.empty((b, length + 1, n_s, 2))
        self.time0 = np.empty(b)
        self.ss = np.zeros((b, n_s, SS_SIZE))
        self.queue = np.zeros((b, n_s, QUEUE, 4))
        self.queue[..., Q_ARRIVAL] = -1.0
        self.kstate, self.ring = new_kernel_state(b, site.latitude_deg, site.longitude_deg)
        n_ev = (length + 1) * n_s if self.record_events else 1
        self.events = np.zeros((b, n_ev, EV_SIZE))
        self.n_events = np.zeros(b, dtype=np.int64)
        self.obs = np.zeros((b, N_FEATURES))
        self.out = np.zeros((b, OUT_SIZE))
        self.slave_power = np.zeros((b, n_s))
        self.meter0 = np.zeros((b, 6))  # step-0 meter readings: export l1..3, pv l1..3 (W)
        link, meter = site.link, site.meter
        for i, (day, win, rng) in enumerate(zip(days, windows, rngs)):
            if not 0 <= win.start_s <= DAY_S - length:
                raise ValueError(f"window {win} does not fit in a day")
            sl = slice(win.start_s, win.start_s + length + 1)
            self.exo[i, :, :3] = day.pv_w[sl]
            self.exo[i, :, 3:] = day.base_w[sl]
            self.slave_exo[i, :, :, 0] = day.slave_available[sl]
            self.slave_exo[i, :, :, 1] = day.slave_draw_w[sl]
            self.meter_rnd[i, :, :6] = rng.normal(0.0, meter.noise_w, (length + 1, 6))
            self.meter_rnd[i, :, 6] = rng.random(length + 1) < meter.missing_rate
            self.meter_rnd[i, 0, 6] = 0.0  # an episode starts with a valid reading
            delay = rng.lognormal(math.log(link.delay_median_s), link.delay_sigma, (length + 1, n_s))
            self.link_rnd[i, :, :, 0] = np.clip(delay, 0.2, link.delay_max_s)
            self.link_rnd[i, :, :, 1] = rng.random((length + 1, n_s)) >= link.ack_rate
            self.time0[i] = EPOCH_2025 + (day.day_of_year - 1) * DAY_S - site.timezone_offset_h * 3600 + win.start_s
            for s, slave in enumerate(site.slaves):
                if slave.tank_kwh > 0:
                    self.ss[i, s, SS_FILL] = float(np.clip(slave.initial_fill + rng.normal(0, 0.1), 0.0, 0.95))
                elif slave.kind == "ev_charger":
                    self.ss[i, s, SS_FILL] = day.ev_energy_kwh[s]
                self.ss[i, s, SS_TIS] = 1e6
                self.ss[i, s, SS_AVAIL] = _slave_available(
                    int(self.params[s, SP_KIND]), self.slave_exo[i, 0, s, 0], self.ss[i, s, SS_FILL],
                    self.params[s, SP_TANK_J],
                )
            self._first_obs(i)
        return self.obs

    def _first_obs(self, i: int) -> None:
        """Observation at step 0: meters read with no controlled load, nothing commanded yet."""
        sig = self._sig
        pv, base, noise = self.exo[i, 0, :3], self.exo[i, 0, 3:], self.meter_rnd[i, 0, :6]
        sig[0:3] = pv - base + noise[:3]
        sig[3:6] = pv + noise[3:]
        sig[6:12] = 0.0
        for p in range(3):
            on_p = self.params[:, SP_PHASE] == p
            sig[12 + p] = float((self.ss[i, on_p, SS_AVAIL] * self.params[on_p, SP_MAX_W]).sum())
        sig[15] = self.site.control.export_setpoint_w
        sig[16] = self.time0[i]
        self.meter0[i] = sig[0:6]
        feature_row(sig, self.kstate[i], self.ring[i], self.obs[i])

    def step(self, targets_w: np.ndarray) -> None:
        """Advance every batch member by 1 s with per-phase targets ``targets_w`` (B, 3) in W.

        Results are in ``self.obs`` (B, F), ``self.out`` (B, OUT_SIZE), ``self.slave_power`` (B, S).
        """
        if self.t >= self.length_s:
            raise RuntimeError("episode is over: call reset()")
        _step_kernel(
            self.t, targets_w, self.params, self.consts, self.weights, self.exo, self.slave_exo,
            self.meter_rnd, self.link_rnd, self.time0, self.ss, self.queue, self.kstate, self.ring,
            self.events, self.n_events, self.obs, self.out, self.slave_power, self._sig,
        )
        self.t += 1

    @property
    def done(self) -> bool:
        return self.t >= self.length_s

    def true_surplus_w(self, offset: int = 1) -> np.ndarray:
        """PV minus base load per phase (B, 3) at step ``t + offset``: the oracle's foresight."""
        k = min(self.t + offset, self.length_s)
        return self.exo[:, k, :3] - self.exo[:, k, 3:]

    def window_surplus_w(self) -> np.ndarray:
        """PV minus base load summed over the phases (B, length_s), W, at the end of every step of the
        episode (step ``t`` uses row ``t + 1``): the whole window's foresight, for planners and training
        signals, never for a controller's state."""
        exo = self.exo[:, 1 : self.length_s + 1]
        return exo[..., :3].sum(-1) - exo[..., 3:].sum(-1)

    def slave_states(self) -> np.ndarray:
        """(B, S, 3): availability, on flag and time in state of each slave (the master's view)."""
        return self.ss[:, :, [SS_AVAIL, SS_IS_ON, SS_TIS]]
