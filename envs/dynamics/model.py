"""Forward dynamics model of the export domain: ``f(state_t, a_t) -> state_{t+1}``, rolled out to ``t + k``.

Architecture (seed 001), per ensemble member (:class:`DynamicsNet`):

* an MLP **encoder** with LayerNorm over ``[z_tau, a_tau]`` (normalised state and action of each second of a
  short context, ``tau = t-H+1 .. t``);
* a 2-layer **LSTM** over the context: commands in flight and ramps need more than one state;
* a **head** predicting the change of the state from ``t`` to ``t+1``.

What is learned, and what is not. The head predicts what the controls change: **export and acknowledged
power per phase** (:data:`LEARNED_PATTERN`). With ``structured`` (the default) it does so through the
site's balance per phase (``export = pv - base - controlled``): the acknowledged power moves toward the
command by a predicted share per second, the command being the action in W plus a learned correction for
the slaves' own rules (EV minimum, heat-pump on/off) that vanishes with the target, capped by the available
power; the rest of the balance, ``u = export + acked - pv`` (minus the base load, minus the controlled load's
lag behind its command), changes by a predicted amount; and ``export = pv - acked + u``. An action thus
moves export one for one through the acknowledged power, within what is available, and a state whose
command is met does not drift. Without ``structured`` the head predicts the change of each learned feature
directly.

The rest of the state is not learned. PV and available power are exogenous: replayed from the log (the
model env, the evaluator) or held at their last value (open-loop scoring). ``target_w_l*`` at ``t+1`` is the
action of ``t``; the clock advances; the setpoint is held; every other feature (totals, means, deltas,
imbalance, error, meter age) is computed from the history by envs/state_spec.py's kernel
(envs/dynamics/rollout.py), so a rollout is consistent with the state spec by construction.

Why one second and teacher forcing. On logs of the PI, the actions ``a_{t+1} .. a_{t+k-1}`` react to the
states between ``t`` and ``t+k``: a model given ``s_t`` and those actions, or rolled out on its own
predictions during training, learns to read them as a disturbance detector (the PI raises its target when
export rises) and answers a raised target with *more* export. Trained on the observed state of every second,
an action carries no information the state does not, and its effect is learned through target ->
acknowledged -> export. ``state_{t+k}``, the dataset's k-step target, is a k-step rollout.

Why a short open-loop tail anyway (``rollout_steps``). Trained on teacher forcing alone, the model never saw
its own predictions in its input; in a rollout it read its first predicted step as a trend and extended it
(ramps of +50 W/s on quiet nights, where persistence is exact). A few open-loop seconds after each
teacher-forced window teach it to read its own output. The tail keeps the logged actions, so the reading
above could creep back in over long tails; 5 s (one k) is what was measured, and on the 8-day dataset it
brought the test split's 5-s export error below persistence's (the README has the numbers).

Loss: MSE over the learned features at every context position, each error in standard deviations of that
feature's one-second change (``loss_scale``), weighted x5 on export power (``export_w_l1..3``) and x3 on
the other per-phase powers (``acked_w_l1..3``), divided by the sum of the weights. Positions whose next
meter reading is missing are masked for export.

An ensemble of ``members`` independently initialised nets gives the disagreement the model env uses to stop
rollouts where the model does not know.

This module imports torch and numpy only (no Ray, no gymnasium, nothing from ``envs``), so it runs on a
GPU box that has torch alone; feature roles come from the feature *names* stored with the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "gridrl-forward-model-v2"
WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
CLIP = 10.0  # the same clip as envs/normalization.py
LEARNED_PATTERN = re.compile(r"^(export|acked)_w_l[123]$")
EXPORT_PATTERN = re.compile(r"^export_w(_l[123])?$")
PHASE_POWER_PATTERN = re.compile(r"_w_l[123]$")
METER_PATTERN = re.compile(r"^(export|pv)_w_l[123]$")
SIGNAL_INPUT = re.compile(
    r"^((export|pv|target|acked|available)_w_l[123]|setpoint_w|meter_age_s|solar_time_sin|solar_time_cos)$"
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and loss of the forward model (the ``model:`` section of forward_model.yaml)."""

    hidden: int = 128
    """Width of the encoder and of the LSTM's hidden state."""
    encoder_layers: int = 2
    """Linear + LayerNorm + GELU blocks in the encoder."""
    lstm_layers: int = 2
    """Stacked LSTM layers (the seed's architecture: 2)."""
    context: int = 10
    """Seconds of history the LSTM reads (the state of ``t-H+1 .. t``) to predict ``t+1``."""
    members: int = 3
    """Ensemble members (independent initialisations and batches); 1 = no disagreement signal."""
    dropout: float = 0.0
    """Dropout between LSTM layers and in the head (0 = off)."""
    inputs: str = "signals"
    """What the encoder reads of each state: 'signals' (the measured and commanded per-phase powers,
    setpoint, meter age, clock: the LSTM derives trends from the context itself) or 'all' (every feature but
    the calendar). Derived features (means, deltas) of a model's own rollout are smoother than logged ones;
    fed back, they invite runaway trends."""
    structured: bool = True
    """Structured head (the site's balance, see the module docstring); False = a plain change per feature."""
    export_weight: float = 5.0
    """Loss weight of export power (export_w, export_w_l1..3)."""
    phase_power_weight: float = 3.0
    """Loss weight of the other per-phase powers (names ending in _w_l1..3)."""
    rollout_steps: int = 5
    """Open-loop seconds trained after each teacher-forced window: the model's own predicted export and
    acknowledged power replace the logged ones in its input for this many steps (the rest of the input is
    logged), and their errors join the loss. 0 = teacher forcing only. Needs ``inputs: signals`` and the
    structured head (a rollout then needs no feature kernel)."""
    loss_scale: str = "change"
    """Units of the loss's errors: 'change' = per feature, in standard deviations of its one-second change
    (the head's own units); 'state' = in standard deviations of the state, where a miss of tens of watts
    is a tiny error. Measured alone (8-day dataset, teacher forcing only), the switch moved the val export
    MAE little (117.2 W 'state', 116.8 W 'change' after 7-8 iterations); the open-loop tail did the rest."""

    def __post_init__(self) -> None:
        if (
            self.hidden < 4
            or self.encoder_layers < 1
            or self.lstm_layers < 1
            or self.members < 1
            or self.context < 1
        ):
            raise ValueError("hidden: must be >= 4, and encoder_layers, lstm_layers, members, context >= 1")
        if self.inputs not in ("signals", "all"):
            raise ValueError(f"inputs: 'signals' or 'all', got {self.inputs!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.export_weight <= 0 or self.phase_power_weight <= 0:
            raise ValueError("export_weight: loss weights must be > 0")
        if self.rollout_steps < 0:
            raise ValueError(f"rollout_steps: must be >= 0, got {self.rollout_steps}")
        if self.rollout_steps and (self.inputs != "signals" or not self.structured):
            raise ValueError("rollout_steps: open-loop training needs inputs: signals and structured: true")
        if self.loss_scale not in ("change", "state"):
            raise ValueError(f"loss_scale: 'change' or 'state', got {self.loss_scale!r}")


def feature_weights(
    names: list[str] | tuple[str, ...], export_weight: float = 5.0, phase_weight: float = 3.0
) -> np.ndarray:
    """Loss weights: export power x``export_weight``, other per-phase power x``phase_weight``, else 1."""
    return np.array(
        [
            export_weight
            if EXPORT_PATTERN.match(n)
            else phase_weight
            if PHASE_POWER_PATTERN.search(n)
            else 1.0
            for n in names
        ]
    )


def learned_indices(names: list[str] | tuple[str, ...]) -> list[int]:
    """Indices of the features the head predicts (the measured per-phase powers)."""
    return [i for i, n in enumerate(names) if LEARNED_PATTERN.match(n)]


class DynamicsNet(nn.Module):
    """One ensemble member: encoder (LayerNorm MLP) -> LSTM -> head (change of the learned features)."""

    def __init__(self, n_state: int, n_action: int, n_out: int, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_state + n_action
        for _ in range(cfg.encoder_layers):
            layers += [nn.Linear(width, cfg.hidden), nn.LayerNorm(cfg.hidden), nn.GELU()]
            width = cfg.hidden
        self.encoder = nn.Sequential(*layers)
        self.lstm = nn.LSTM(
            cfg.hidden,
            cfg.hidden,
            num_layers=cfg.lstm_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Linear(2 * cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, n_out),
        )

    def forward(self, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Head output (B, T, n_out) at every position of states ``z`` (B, T, S) and actions (B, T, A)."""
        return self.step(z, actions)[0]

    def step(
        self, z: torch.Tensor, actions: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` from the LSTM state ``state`` (None = fresh); also returns the state after it."""
        e = self.encoder(torch.cat([z, actions], dim=-1))
        out, state = self.lstm(e, state)
        return self.head(torch.cat([out, e], dim=-1)), state


class ForwardModel(nn.Module):
    """The ensemble with its normalisation, feature roles and loss; self-contained on save/load.

    Args:
        feature_names: Names of the state features, in order (envs/state_spec.py FEATURE_NAMES).
        obs_mean, obs_std: Normalisation of the state (the dataset's normalization.json).
        delta_std: Per-feature std of the normalised one-second change on the train split (the head's scale).
        n_action: Action size (3 per-phase targets in [-1, 1]).
        k: The dataset's lookahead (the horizon the model is judged on; stored for evaluation).
        config: Architecture and loss weights.
        action_scale_w: The site's max_power_per_phase_w: action ``a`` means ``(a + 1) / 2 * scale`` W
            (envs/actions.py to_watts, restated here so that this module needs torch alone).
    """

    def __init__(
        self,
        feature_names: list[str] | tuple[str, ...],
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        delta_std: np.ndarray,
        n_action: int = 3,
        k: int = 5,
        config: ModelConfig | None = None,
        action_scale_w: float = 7500.0,
    ):
        super().__init__()
        self.config = config or ModelConfig()
        self.action_scale_w = float(action_scale_w)
        self.feature_names = tuple(feature_names)
        self.n_state, self.n_action, self.k = len(self.feature_names), int(n_action), int(k)
        s = self.n_state
        self.learned = learned_indices(self.feature_names)
        if not self.learned:
            raise ValueError("feature_names: no measured per-phase power to learn")
        self.register_buffer("obs_mean", torch.as_tensor(np.asarray(obs_mean, np.float32).reshape(s)))
        self.register_buffer("obs_std", torch.as_tensor(np.asarray(obs_std, np.float32).reshape(s)))
        self.register_buffer(
            "delta_std", torch.as_tensor(np.maximum(np.asarray(delta_std, np.float32).reshape(s), 1e-4))
        )
        w = feature_weights(self.feature_names, self.config.export_weight, self.config.phase_power_weight)
        self.register_buffer("loss_weight", torch.as_tensor(w[self.learned].astype(np.float32)))
        self.meter = [j for j, i in enumerate(self.learned) if METER_PATTERN.match(self.feature_names[i])]
        visible = np.ones(s, np.float32)
        if self.config.inputs == "signals":
            visible = np.array(
                [1.0 if SIGNAL_INPUT.match(n) else 0.0 for n in self.feature_names], np.float32
            )
        else:
            visible[
                [self.feature_names.index(n) for n in ("doy_sin", "doy_cos") if n in self.feature_names]
            ] = 0.0
        self.register_buffer("input_mask", torch.as_tensor(visible))
        n_out = len(self.learned)
        if self.config.structured:
            self._groups = {
                g: [self.feature_names.index(f"{g}_w_l{p}") for p in (1, 2, 3)]
                for g in ("export", "pv", "acked", "available")
            }
            self._pos = {g: [self.learned.index(i) for i in self._groups[g]] for g in ("export", "acked")}
            n_out = 9  # per phase: gate, command correction, change of u
        self.members = nn.ModuleList(
            DynamicsNet(s, self.n_action, n_out, self.config) for _ in range(self.config.members)
        )

    @property
    def context(self) -> int:
        return self.config.context

    # ----- normalisation -------------------------------------------------------------------------------
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw state -> clipped normalised state (NaN -> the mean), as envs/normalization.py does."""
        z = (obs - self.obs_mean) / self.obs_std
        return torch.clamp(torch.nan_to_num(z, nan=0.0), -CLIP, CLIP)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.obs_std + self.obs_mean

    # ----- prediction ----------------------------------------------------------------------------------
    def forward(
        self,
        z: torch.Tensor,
        actions: torch.Tensor,
        members: list[int] | None = None,
        pv_next: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted normalised learned features at ``tau + 1`` for every position ``tau``: (M, B, T, L).

        Args:
            z: (B, T, S) normalised states of ``T`` consecutive seconds.
            actions: (B, T, A) the action taken in each of those seconds, in [-1, 1].
            members: Ensemble members to run (default all).
            pv_next: (B, T, 3) PV readings (W) at ``tau + 1`` (a replayed log, or the truth in training);
                None = held at ``tau``'s. PV is exogenous: the structured head builds export on it.
        """
        idx = range(len(self.members)) if members is None else members
        zin = z * self.input_mask
        if self.config.structured:
            return torch.stack(
                [self._structured(z, actions, self.members[m](zin, actions), pv_next) for m in idx]
            )
        base = z[..., self.learned]
        scale = self.delta_std[self.learned]
        return torch.stack([base + self.members[m](zin, actions) * scale for m in idx])

    def open_loop(
        self, z: torch.Tensor, actions: torch.Tensor, pv_next: torch.Tensor, member: int, teacher: int
    ) -> torch.Tensor:
        """Member ``member``'s predictions (B, T, L) of the learned features at positions 1..T of a window.

        Teacher-forced over the first ``teacher`` positions; from there on, its own predicted export and
        acknowledged power replace the logged ones in ``z`` (B, T, S), the LSTM state carried over;
        ``actions`` (B, T, A) and ``pv_next`` (B, T, 3) stay logged (``config.rollout_steps``).
        """
        net, mask = self.members[member], self.input_mask
        h, state = net.step(z[:, :teacher] * mask, actions[:, :teacher])
        preds = [self._structured(z[:, :teacher], actions[:, :teacher], h, pv_next[:, :teacher])]
        for t in range(teacher, z.shape[1]):
            zt = z[:, t : t + 1].clone()
            zt[..., self.learned] = preds[-1][:, -1:]
            h, state = net.step(zt * mask, actions[:, t : t + 1], state)
            preds.append(self._structured(zt, actions[:, t : t + 1], h, pv_next[:, t : t + 1]))
        return torch.cat(preds, dim=1)

    def _raw(self, z: torch.Tensor, group: str) -> torch.Tensor:
        i = self._groups[group]
        return z[..., i] * self.obs_std[i] + self.obs_mean[i]

    def _structured(
        self, z: torch.Tensor, actions: torch.Tensor, h: torch.Tensor, pv_next: torch.Tensor | None
    ) -> torch.Tensor:
        """Head output (B, T, 9) -> normalised learned features at tau + 1, by the site's balance per phase.

        ``acked' = acked + sigmoid(g) * (c - acked)`` with the command
        ``c = min(relu(target + r * min(target, 0.1 * scale)), available)`` (no target, no command);
        ``u' = u + d_u`` with ``u = export + acked - pv``; ``export' = pv' - acked' + u'`` with ``pv'`` from
        ``pv_next`` (held at ``pv`` when None).
        """
        ds = self.delta_std * self.obs_std  # raw std of the one-second change
        g = self._groups
        export, pv, acked, avail = (self._raw(z, n) for n in ("export", "pv", "acked", "available"))
        gate, resid, d_u = h.split(3, dim=-1)
        target = (actions.clamp(-1.0, 1.0) + 1.0) * (0.5 * self.action_scale_w)
        cmd = torch.minimum(
            torch.relu(target + resid * target.clamp(max=0.1 * self.action_scale_w)), torch.relu(avail)
        )
        acked1 = acked + torch.sigmoid(gate - 1.0) * (cmd - acked)
        pv1 = pv if pv_next is None else pv_next
        export1 = pv1 - acked1 + (export + acked - pv) + d_u * ds[g["export"]]
        out = torch.empty(*z.shape[:-1], len(self.learned), dtype=z.dtype, device=z.device)
        for name, val in (("export", export1), ("acked", acked1)):
            i = g[name]
            out[..., self._pos[name]] = (val - self.obs_mean[i]) / self.obs_std[i]
        return out

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Weighted MSE of ``pred`` (M, B, T, L) vs ``target`` (B, T, L); ``mask`` (B, T, L) in {0, 1}.

        Errors in the units of ``config.loss_scale``; each member's masked mean, summed over members.
        """
        w = self.loss_weight if mask is None else self.loss_weight * mask
        err = pred - target.unsqueeze(0)
        if self.config.loss_scale == "change":
            err = err / self.delta_std[self.learned]
        err = (err**2 * w).sum(-1)
        denom = (w.sum(-1) if mask is not None else self.loss_weight.sum()).clamp_min(1e-6)
        return (err / denom).mean(dim=(1, 2)).sum()

    def targets(
        self, z_next: torch.Tensor, meter_ok: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(learned features of ``z_next``, loss mask): meter features masked where ``meter_ok`` is False."""
        tgt = z_next[..., self.learned]
        if meter_ok is None:
            return tgt, None
        mask = torch.ones_like(tgt)
        mask[..., self.meter] = meter_ok.unsqueeze(-1).to(tgt.dtype)
        return tgt, mask

    # ----- persistence ---------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "action_scale_w": self.action_scale_w,
            "feature_names": list(self.feature_names),
            "n_action": self.n_action,
            "k": self.k,
            "config": asdict(self.config),
            "learned": [self.feature_names[i] for i in self.learned],
            "obs_mean": self.obs_mean.cpu().tolist(),
            "obs_std": self.obs_std.cpu().tolist(),
            "delta_std": self.delta_std.cpu().tolist(),
        }

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.pt`` (weights, metadata) and ``model.json`` (readable) under ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata(), **(extra or {})}
        torch.save(
            {"meta": meta, "state_dict": {k: v.cpu() for k, v in self.state_dict().items()}}, d / WEIGHTS_FILE
        )
        (d / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> ForwardModel:
        """Load a model saved by :meth:`save` (a checkpoint directory), in eval mode, on ``device``."""
        p = Path(directory)
        if not (p / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} (not a forward-model checkpoint)")
        blob = torch.load(p / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory}: format {meta.get('format')!r}, expected {FORMAT!r}")
        known = {f.name for f in fields(ModelConfig)}
        model = cls(
            meta["feature_names"],
            np.array(meta["obs_mean"]),
            np.array(meta["obs_std"]),
            np.array(meta["delta_std"]),
            meta["n_action"],
            meta["k"],
            ModelConfig(**{k: v for k, v in meta["config"].items() if k in known}),
            float(meta["action_scale_w"]),
        )
        model.load_state_dict(blob["state_dict"])
        model.extra = {k: v for k, v in meta.items() if k not in model.metadata()}
        return model.to(device).eval()


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' = CUDA when present, else CPU; or an explicit torch device string."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def train_step(
    model: ForwardModel,
    optimizer: torch.optim.Optimizer,
    z: torch.Tensor,
    actions: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    grad_clip: float = 1.0,
    pv_next: torch.Tensor | None = None,
) -> float:
    """One optimiser step over every member, each on its own batch (teacher forcing); returns the mean loss.

    Args:
        model: The ensemble (put in train mode here).
        optimizer: Over ``model.parameters()``.
        z: (M, B, T, S) normalised states of ``T`` consecutive seconds, one batch per member (with
            ``config.rollout_steps`` = R > 0: the last R seconds are predicted open loop, ``pv_next`` needed).
        actions: (M, B, T, A) the actions of those seconds.
        target: (M, B, T, L) normalised learned features one second later (:meth:`ForwardModel.targets`).
        mask: (M, B, T, L) loss mask, or None.
        grad_clip: Max global gradient norm (0 = no clipping).
        pv_next: (M, B, T, 3) logged PV readings one second later (W), for the structured head's balance.
    """
    model.train()
    loss = z.new_zeros(())
    teacher = z.shape[2] - model.config.rollout_steps  # the window's open-loop tail (0 steps: none)
    for m in range(len(model.members)):
        if model.config.rollout_steps:
            pred = model.open_loop(z[m], actions[m], pv_next[m], m, teacher)[None]
        else:
            pred = model(z[m], actions[m], members=[m], pv_next=None if pv_next is None else pv_next[m])
        loss = loss + model.loss(pred, target[m], None if mask is None else mask[m])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach()) / len(model.members)
