"""Stepping the forward model one second at a time, for a batch of episodes: the one implementation behind
the model env, the model-based evaluator and ``gridrl evaluate-model``'s rollouts.

Each second, the model (envs/dynamics/model.py) reads the last ``H`` states and actions and predicts export
and acknowledged power per phase for the next second; :class:`ModelStepper` turns them into the signals of
envs/state_spec.py (meter readings, acknowledged and available power, the action as the new target, the
clock) and runs the state spec's own feature kernel, as the simulator does. A rollout starts from a
logged state with its logged history (:class:`LoggedContext`: the context the LSTM reads and the 60 s of
totals the kernel's windows need). Two modes:

* ``replay=False`` (**open loop**): PV and available power are held at their last value (persistence, the
  honest forecast of the weather at these horizons); readings never go missing. ``gridrl evaluate-model``
  scores this mode.
* ``replay=True`` (**log replay**, the model env's and the evaluator's mode): what no controller can change
  is replayed from the logged episode the rollout started in: PV readings, the base load, missing
  readings, setpoint, and the available power within the limits below. The model supplies the acknowledged
  power per phase, what the actions change, and export follows from it.

**Replayed uncontrolled balance** (``balance='replay'``, the default of log replay). Per phase,
``export = pv - base - controlled``: PV and the base load are the site's, and only the controlled load is
the policy's. The model predicts the acknowledged power under the policy's actions; export is the logged
export plus the logged acknowledged power minus the predicted one, so the base load, its events and PV
follow the log second by second, and a policy's export differs from the logged export by exactly what it
commands differently. The model's own prediction of the rest of the balance (``balance='model'``) was learned
from closed-loop logs of the PI, in which the acknowledged power falls when the base load rises (the PI
backs off a kettle): through the model, no control exported 6.7 kWh where the simulator 13.4 (the
README's rank check). Acknowledged power stands for delivered power: a slave that
ignores a command (a heat pump below half power, an EV below 6 A) is counted as absorbing it.

**Energy-accounted availability** (``availability='energy'``, the default of log replay). A phase's
availability is not exogenous: a tank that the policy fills faster than the logged controller did is full
sooner, and takes nothing more. From the log alone (state spec v2's ``acked_kwh_since_available_l*``), each
logged availability segment has a budget (envs/dynamics/data.py ``availability_budgets``): the acknowledged
energy the logged controller commanded to the phase from the segment's start until the log's availability
dropped, looked up beyond the rollout's horizon in the rest of the log. In the rollout the phase is
available only where the log says so, and it becomes unavailable, until the log's own segment ends, as soon
as the acknowledged energy the rollout has commanded to it since the segment's start (the feature kernel's
own counter) reaches that budget plus the phase's credit. The credit is what a policy that took less than
the logged controller left unused at a logged drop: its tank is that much emptier, so the next logged
segment may take that much more (never longer than the log's segment lasts, since the log cannot tell a full
tank from an EV that left). Acknowledged energy is what the log has; it stands for delivered energy. A
segment whose drop the log does not show has no budget. ``availability='replay'`` replays the logged
available power as it is (earlier versions): a policy that fills a tank then keeps absorbing in the model.

Each step also returns the ensemble's disagreement: the RMS over the learned features (weighted like the
loss) of the members' standard deviation, in normalised units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from envs.actions import to_watts
from envs.dynamics.data import SplitData
from envs.dynamics.model import ForwardModel
from envs.jit import kernel
from envs.state_spec import (
    CLOCK_FEATURES,
    FEAT,
    FEATURE_HIGH,
    FEATURE_LOW,
    KS_AGE,
    KS_AVAIL_FOR,
    KS_COUNT,
    KS_EWM,
    KS_HELD,
    KS_KWH,
    KS_POS,
    N_SIGNALS,
    RING,
    SIG,
    feature_row,
    new_kernel_state,
)

_PH = (1, 2, 3)
HISTORY_S = RING - 1  # logged seconds before a start that a rollout needs (the kernel's 60 s windows)
_SIGNAL_OF = {
    **{f"export_w_l{p}": f"meter_export_w_l{p}" for p in _PH},
    **{f"pv_w_l{p}": f"meter_pv_w_l{p}" for p in _PH},
}
_METER_SIG = [SIG[f"meter_export_w_l{p}"] for p in _PH] + [SIG[f"meter_pv_w_l{p}"] for p in _PH]
_PV_SIG = [SIG[f"meter_pv_w_l{p}"] for p in _PH]
_AVAIL_SIG = [SIG[f"available_w_l{p}"] for p in _PH]
_TARGET_SIG = [SIG[f"target_w_l{p}"] for p in _PH]
_NONNEG = [SIG[f"{n}_w_l{p}"] for n in ("acked", "available") for p in _PH]
_PV_L = [FEAT[f"pv_w_l{p}"] for p in _PH]
EXPORT_L = [FEAT[f"export_w_l{p}"] for p in _PH]
ACKED_L = [FEAT[f"acked_w_l{p}"] for p in _PH]
_AVAIL_L = [FEAT[f"available_w_l{p}"] for p in _PH]
_CLOCK = [FEAT[n] for n in CLOCK_FEATURES]
AVAILABILITY_MODES = ("energy", "replay")
BALANCE_MODES = ("replay", "model")
BUDGET_TOL_KWH = 1e-4  # 0.36 kJ: the logged budgets are float32; the logged controller itself never trips


@kernel
def _features_batch(sig: np.ndarray, kstate: np.ndarray, ring: np.ndarray, out: np.ndarray) -> None:
    for b in range(sig.shape[0]):
        feature_row(sig[b], kstate[b], ring[b], out[b])


@dataclass
class LoggedContext:
    """Where a batch of rollouts starts: logged history before each start and the logged episode after it.

    Attributes:
        states: (B, T + 1, F) logged states from each start on (index 0 = the start state).
        history: (B, HISTORY_S + 1, F) logged states of the ``HISTORY_S`` s up to the start (last = start).
        actions: (B, HISTORY_S, 3) logged actions of those seconds before the start.
        time_s: (B,) UTC second of the start state.
        budget_kwh: (B, T + 1, 3) the logged availability budget of each state's segment per phase
            (:meth:`SplitData.availability_budgets`; ``inf`` = none), or None (availability as logged).
    """

    states: np.ndarray
    history: np.ndarray
    actions: np.ndarray
    time_s: np.ndarray
    budget_kwh: np.ndarray | None = None

    @classmethod
    def from_split(cls, split: SplitData, starts: np.ndarray, horizon: int) -> LoggedContext:
        """Context of rows ``starts`` (from :meth:`SplitData.rollout_starts`) for ``horizon`` steps."""
        starts = np.asarray(starts, np.int64)
        rows = starts[:, None] + np.arange(-HISTORY_S, 1)
        # State t of a window is row start + t's (the last, maybe past the run's end, takes row T - 1's).
        ahead = np.minimum(starts[:, None] + np.arange(horizon + 1), starts[:, None] + horizon - 1)
        return cls(
            states=split.states(starts, horizon),
            history=split.obs[rows].astype(np.float64),
            actions=split.actions[rows[:, :-1]].astype(np.float64),
            time_s=split.time_s[starts].astype(np.float64),
            budget_kwh=split.availability_budgets()[ahead],
        )


def kernel_state(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The feature kernel's streaming state after the logged ``history`` (B, HISTORY_S + 1, F)."""
    b = history.shape[0]
    # The site's place is not in the logged states: the clock features are replayed from the log instead
    # (ModelStepper.step), so the kernel's own (at 0 deg, 0 deg) are overwritten.
    kstate, ring = new_kernel_state(b, 0.0, 0.0)
    last = history[:, -1]
    kstate[:, KS_AVAIL_FOR : KS_AVAIL_FOR + 3] = last[:, [FEAT[f"available_for_s_l{p}"] for p in _PH]]
    kstate[:, KS_KWH : KS_KWH + 3] = last[:, [FEAT[f"acked_kwh_since_available_l{p}"] for p in _PH]]
    kstate[:, KS_HELD : KS_HELD + 3] = last[:, [FEAT[f"export_w_l{p}"] for p in _PH]]
    kstate[:, KS_HELD + 3 : KS_HELD + 6] = last[:, _PV_L]
    kstate[:, KS_AGE] = last[:, FEAT["meter_age_s"]]
    kstate[:, KS_EWM] = last[:, FEAT["pv_w_ewm_30min"]]  # the half hour's means go on from the logged ones
    kstate[:, KS_EWM + 1] = last[:, FEAT["clear_sky_ewm_30min_w_m2"]]
    kstate[:, KS_COUNT] = RING
    kstate[:, KS_POS] = 0.0  # the ring holds the last RING totals, oldest first: next write at 0
    ring[:, 0] = history[:, -RING:, FEAT["export_w"]]
    ring[:, 1] = history[:, -RING:, FEAT["pv_w"]]
    return kstate, ring


class ModelStepper:
    """A batch of model rollouts stepped one second at a time.

    Args:
        model: The trained ensemble.
        max_power_per_phase_w: Action scale of the site (envs/actions.py).
        member: 'mean' (the ensemble mean steps the state), 'random' (a member drawn per second and episode
            from the ``rng`` given to :meth:`reset`) or a member index.
        replay: Log-replay mode (see the module docstring); False = open loop.
        availability: In log replay, 'energy' (a phase's availability ends once the rollout has commanded it
            the logged segment's energy, see the module docstring) or 'replay' (the logged availability).
        balance: In log replay, 'replay' (the uncontrolled part of each phase's balance follows the log, see
            the module docstring) or 'model' (the model's own prediction of it).
    """

    def __init__(
        self,
        model: ForwardModel,
        max_power_per_phase_w: float,
        member: str | int = "mean",
        replay: bool = True,
        availability: str = "energy",
        balance: str = "replay",
    ):
        if availability not in AVAILABILITY_MODES:
            raise ValueError(f"availability: one of {AVAILABILITY_MODES}, got {availability!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance: one of {BALANCE_MODES}, got {balance!r}")
        self.balance = balance
        self.model = model.eval()
        self.max_w = float(max_power_per_phase_w)
        self.member, self.replay, self.availability = member, replay, availability
        self.device = model.obs_mean.device
        w = model.loss_weight.cpu().numpy().astype(np.float64)
        self._dis_w = w / w.sum()
        names = model.feature_names
        self._sig_of_learned = np.array([SIG[_SIGNAL_OF.get(names[i], names[i])] for i in model.learned])
        learned_names = [names[i] for i in model.learned]
        self._export_j = [learned_names.index(f"export_w_l{p}") for p in _PH]
        self._acked_j = [learned_names.index(f"acked_w_l{p}") for p in _PH]
        self._sig = np.zeros((0, N_SIGNALS))

    def reset(self, context: LoggedContext, rng: np.random.Generator | None = None) -> np.ndarray:
        """Start rollouts at the context's start states; returns them (B, F) float64."""
        h = self.model.context
        self.ctx, self.rng = context, rng or np.random.default_rng(0)
        self.kstate, self.ring = kernel_state(context.history)
        self.z = self._norm(context.history[:, -h:])
        self.a = torch.zeros((len(context.time_s), h, self.model.n_action), device=self.device)
        self.a[:, :-1] = torch.as_tensor(
            context.actions[:, -(h - 1) :] if h > 1 else context.actions[:, :0],
            dtype=torch.float32,
            device=self.device,
        )
        self.state = context.history[:, -1].copy()
        self.t = 0
        self._sig = np.zeros((len(context.time_s), N_SIGNALS))
        b = len(context.time_s)
        self.full = np.zeros((b, 3), bool)  # energy-accounted: the phase took its logged segment's budget
        self.credit_kwh = np.zeros((b, 3))  # ... and what a lighter policy left unused at logged drops
        return self.state.copy()

    def _available(self, log_now: np.ndarray, log_next: np.ndarray) -> np.ndarray:
        """Available power per phase (B, 3) at t + 1 under energy accounting (the module docstring), from the
        logged states at t and t + 1; updates the exhausted flags and credits."""
        t = min(self.t, self.ctx.budget_kwh.shape[1] - 1)
        budget = self.ctx.budget_kwh[:, t] + self.credit_kwh
        taken = self.kstate[:, KS_KWH : KS_KWH + 3]  # commanded since the rollout's segment began (incl. t)
        on_now = self.state[:, _AVAIL_L] > 0.0
        self.full |= on_now & (taken > budget + BUDGET_TOL_KWH)
        logged_next = log_next[:, _AVAIL_L]
        drop = (log_now[:, _AVAIL_L] > 0.0) & ~(logged_next > 0.0)  # the log's segment ends at t
        left = np.where(on_now & ~self.full & np.isfinite(budget), np.maximum(budget - taken, 0.0), 0.0)
        self.credit_kwh = np.where(drop, left, self.credit_kwh)
        self.full &= logged_next > 0.0  # a logged break ends the segment: the next starts afresh
        return np.where(self.full, 0.0, logged_next)

    def _norm(self, x: np.ndarray) -> torch.Tensor:
        return self.model.normalize(torch.as_tensor(x, dtype=torch.float32, device=self.device))

    @torch.no_grad()
    def predict_learned(
        self, actions: np.ndarray, pv_next: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw learned features at t + 1 per member (M, B, L) for actions (B, 3) at t; disagreement (B,).

        ``pv_next`` (B, 3): the PV readings at t + 1 when replayed from the log (the balance uses them).
        """
        self.a[:, -1] = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        pv = None
        if pv_next is not None:
            pv = torch.zeros((*self.a.shape[:2], 3), device=self.device)
            pv[:, -1] = torch.as_tensor(pv_next, dtype=torch.float32, device=self.device)
        z = self.model(self.z, self.a, pv_next=pv)[:, :, -1]  # (M, B, L)
        sd = (
            z.std(0, unbiased=False).cpu().numpy().astype(np.float64)
            if z.shape[0] > 1
            else np.zeros(z.shape[1:])
        )
        dis = np.sqrt((sd**2 * self._dis_w).sum(-1))
        li = self.model.learned
        raw = z * self.model.obs_std[li] + self.model.obs_mean[li]
        return raw.cpu().numpy().astype(np.float64), dis

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply actions in [-1, 1] (B, 3) for 1 s; returns (states (B, F) float64, disagreement (B,))."""
        a = np.clip(np.nan_to_num(np.asarray(actions, np.float64), nan=-1.0), -1.0, 1.0)
        log = self.ctx.states[:, min(self.t + 1, self.ctx.states.shape[1] - 1)] if self.replay else None
        members, dis = self.predict_learned(a, None if log is None else log[:, _PV_L])
        if self.member == "mean":
            learned = members.mean(0)
        else:
            pick = (
                self.rng.integers(0, members.shape[0], members.shape[1])
                if self.member == "random"
                else np.full(members.shape[1], int(self.member))
            )
            learned = members[pick, np.arange(members.shape[1])]
        if log is not None and self.balance == "replay":
            # export = pv - base - controlled: only the controlled part is the policy's, the rest the log's.
            acked = np.maximum(learned[:, self._acked_j], 0.0)
            learned[:, self._export_j] = log[:, EXPORT_L] + log[:, ACKED_L] - acked
        sig = self._sig
        sig[:, self._sig_of_learned] = learned
        sig[:, _TARGET_SIG] = to_watts(a, self.max_w)
        sig[:, SIG["setpoint_w"]] = self.state[:, FEAT["setpoint_w"]]
        sig[:, SIG["time_s"]] = self.ctx.time_s + self.t + 1
        exo = self.state if log is None else log  # exogenous: held (open loop) or replayed
        sig[:, _PV_SIG] = exo[:, _PV_L]
        sig[:, _AVAIL_SIG] = exo[:, _AVAIL_L]
        if log is not None and self.availability == "energy" and self.ctx.budget_kwh is not None:
            now = self.ctx.states[:, min(self.t, self.ctx.states.shape[1] - 1)]
            sig[:, _AVAIL_SIG] = self._available(now, log)
        if log is not None:
            sig[:, SIG["setpoint_w"]] = log[:, FEAT["setpoint_w"]]
            sig[np.ix_(log[:, FEAT["meter_age_s"]] > 0, _METER_SIG)] = np.nan
        sig[:, _NONNEG] = np.maximum(sig[:, _NONNEG], 0.0)
        out = np.empty((len(sig), len(FEAT)))
        _features_batch(sig, self.kstate, self.ring, out)
        out[:, _CLOCK] = self.ctx.states[:, min(self.t + 1, self.ctx.states.shape[1] - 1)][:, _CLOCK]
        self.state = np.clip(out, FEATURE_LOW, FEATURE_HIGH)
        self.z = torch.cat([self.z[:, 1:], self._norm(self.state)[:, None]], dim=1)
        self.a = torch.cat([self.a[:, 1:], torch.zeros_like(self.a[:, :1])], dim=1)
        self.t += 1
        return self.state.copy(), dis


def rollout_logged_actions(
    model: ForwardModel,
    split: SplitData,
    starts: np.ndarray,
    horizon: int,
    max_power_per_phase_w: float,
    replay: bool = False,
    member: str | int = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Rollouts with the logged actions: (predicted states (B, horizon, F), disagreement (B, horizon))."""
    context = LoggedContext.from_split(split, starts, horizon)
    stepper = ModelStepper(model, max_power_per_phase_w, member, replay)
    stepper.reset(context)
    acts = split.actions[np.asarray(starts)[:, None] + np.arange(horizon)]
    out = np.empty((len(starts), horizon, model.n_state))
    dis = np.empty((len(starts), horizon))
    for t in range(horizon):
        out[:, t], dis[:, t] = stepper.step(acts[:, t])
    return out, dis
