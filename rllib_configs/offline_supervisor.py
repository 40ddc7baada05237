"""An offline supervisor: the PI's dispatch preference, learned from a site's logs alone (issue 17).

The online supervisor (``ppo_supervisor.yaml``) sets one number every 10 minutes, the PI's dispatch
preference, and the PI does the rest. Offline, the logs must show the same states under several
preferences: ``gridrl data generate --controller dithered_preference`` (envs/controllers.py
``DitheredPreferenceController``) logs the PI whose preference is drawn from {-1, 0, +1} every 600 s, its
total unchanged. From such a dataset (``gridrl data build``) this module learns, with no simulator:

1. **The preference each window held**, recovered from the logged targets: for every window of
   ``period_s`` seconds (UTC seconds divided by the period, as the logger's periods start on whole hours),
   the choice whose :func:`envs.controllers.preference_targets` are closest to the logged targets over the
   window's seconds (L1). A window where the choices' targets differ by less than ``informative_w`` on
   average gave the same targets whatever was drawn: it is labelled 0, the PI's own spread, which is what
   ran. Logs of another controller (Serve's shadow logs of a supervisor) recover the same way.
2. **Returns**: every second's discounted return over its contiguous run, at the supervisor's discount
   (``training.gamma`` per ``decision_s`` of the module's config: 0.98 per 10 minutes looks about 8 hours
   ahead), from the dataset's rewards (offline_data/transitions.py: the env's reward on measured powers).
3. **One-step policy improvement** (Brandfonbrener et al., NeurIPS 2021, "Offline RL without off-policy
   evaluation"): ``Q(s, c)``, the return of holding preference ``c`` from state ``s`` and the logged
   (random) preferences after it, regressed on the returns of the windows' seconds (one network, a head
   per choice, fitted on the train split and stopped at its best validation loss). The greedy choice is
   the best head, kept only where it beats 0 (the PI's spread) by ``margin`` standard deviations of the
   return; elsewhere 0. Nothing is extrapolated to a preference the logs never held.
4. **Distillation** into the supervisor's RLModule (rllib_configs/pi_residual.py ``PIResidualPPOModule``,
   built from the module config): its greedy preference is regressed onto the greedy choices on the train
   split's states, so the result is an RLModule checkpoint like a PPO supervisor's, with a
   ``gridrl_run.json`` beside it. ``gridrl benchmark``, ``gridrl export``, Serve and the edge runtime load
   it as they load a trained one.

Deterministic in ``seed`` (torch on one thread). Where it stands: README, "The offline supervisor".
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.actions import to_watts
from envs.config import from_mapping, load_yaml
from envs.controllers import continuous_power, gated_w, preference_targets
from envs.dispatch import start_power_w
from envs.dynamics.data import SplitData, load_split, site_path
from envs.site import SITE_FEATURE_NAMES, Site, load_site, site_features
from envs.state_spec import N_FEATURES

DEFAULT_CONFIG = "rllib_configs/export/ppo_supervisor.yaml"
ALGORITHM = "offline_supervisor"
MIN_SHARE = 0.01
"""Every choice must be what the logs held in at least this share of the train rows (else refused)."""


@dataclass(frozen=True)
class OfflineSupervisorConfig:
    """The learner's settings (``gridrl offline-supervisor`` flags)."""

    config: str = DEFAULT_CONFIG
    """The supervisor's training config: its RLModule (``rl_module``), env_config (``decision_s``,
    ``preference_gate``) and discount (``training.gamma``)."""
    choices: tuple[float, ...] = (-1.0, 0.0, 1.0)
    """The preferences the logs drew (envs/controllers.py PreferenceDitherConfig.choices); must hold 0."""
    period_s: int = 600
    """Seconds a logged preference was held (PreferenceDitherConfig.period_s)."""
    informative_w: float = 50.0
    """A window whose choices' targets differ by less than this (W, mean over its seconds) is labelled 0."""
    stride_s: int = 10
    """Every ``stride_s``-th second of the logs is a sample (their neighbours hardly differ)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layers of the Q network."""
    epochs: int = 40
    """Passes over the train split's samples, for Q and again for the distillation."""
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    margin: float = 0.1
    """A preference other than 0 is chosen only where its Q beats 0's by this many return standard
    deviations (0: plain argmax)."""

    def __post_init__(self) -> None:
        if 0.0 not in self.choices or any(not -1.0 <= c <= 1.0 for c in self.choices):
            raise ValueError(f"choices: preferences within [-1, 1], 0 among them, got {list(self.choices)}")
        for name in ("period_s", "stride_s", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.margin < 0 or self.informative_w < 0:
            raise ValueError(f"margin, informative_w: must be >= 0, got {self.margin}, {self.informative_w}")


def dataset_site(dataset: str | Path) -> tuple[Site, str | None]:
    """The site a dataset was logged on (its manifest's, else the shipped default) and its YAML path."""
    path = site_path(dataset)
    return load_site(path), path


def logged_preferences(split: SplitData, site: Site, cfg: OfflineSupervisorConfig, gate: float) -> np.ndarray:
    """(N,) the preference each row's window held, recovered from the logged targets (module docstring, 1)."""
    max_w = float(site.control.max_power_per_phase_w)
    logged = to_watts(split.actions, max_w)
    cont, gate_w = continuous_power(site), gated_w(site, gate)
    err = np.stack([
        np.abs(preference_targets(split.obs, np.full(len(split), c), cont, gate_w=gate_w) - logged).sum(-1)
        for c in cfg.choices
    ], axis=1)  # (N, C) W
    window = split.time_s // cfg.period_s
    keys = np.stack([split.episode, window], axis=1)
    _, wid, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    wid = wid.reshape(-1)
    total = np.zeros((counts.size, len(cfg.choices)))
    np.add.at(total, wid, err)
    best = total.argmin(1)
    if len(cfg.choices) > 1:  # how far the runner-up is from the best, per second of the window
        spread = (np.sort(total, 1)[:, 1] - total.min(1)) / counts
    else:
        spread = np.zeros(counts.size)
    zero = cfg.choices.index(0.0)
    best = np.where(spread >= cfg.informative_w, best, zero)
    return np.asarray(cfg.choices, np.float64)[best[wid]]


def discounted_returns(split: SplitData, gamma_s: float) -> np.ndarray:
    """(N,) every row's discounted return to the end of its contiguous run (one episode, t + 1 per row)."""
    r = split.rewards.astype(np.float64)
    first = split.run_first()
    k = np.arange(len(split)) - first  # seconds since the run began
    scaled = r * gamma_s ** k
    out = np.empty_like(r)
    ends = np.flatnonzero(np.r_[first[1:] != first[:-1], True])
    start = 0
    for end in ends:
        seg = scaled[start : end + 1]
        out[start : end + 1] = np.cumsum(seg[::-1])[::-1] / gamma_s ** k[start : end + 1]
        start = end + 1
    return out


def _module_spec(raw: dict[str, Any], site: Site) -> Any:
    """The supervisor's RLModule spec from its training config, told the logged site."""
    import gymnasium as gym
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_configs.pi_residual import ResidualConfig

    rl = raw["rl_module"]
    module_cls = rl["rl_module_spec"]["module_class"]
    mod, _, name = module_cls.rpartition(".")
    cls = getattr(__import__(mod, fromlist=[name]), name)
    mc = json.loads(json.dumps(rl.get("model_config") or {}))
    where = "rl_module.model_config.pi_residual"
    residual = from_mapping(ResidualConfig, dict(mc["pi_residual"]), path=where)
    if residual.allocation != "supervisor":
        raise ValueError(f"{DEFAULT_CONFIG}-like config needed: pi_residual.allocation 'supervisor', "
                         f"got {residual.allocation!r}")
    mc["pi_residual"] |= {
        "start_power_w": float(start_power_w(site)),
        "continuous_w": [float(w) for w in continuous_power(site)],
        "site_features": [float(f) for f in site_features(site)],  # told its site: it runs there as saved
    }
    n_obs = N_FEATURES + len(SITE_FEATURE_NAMES)
    return RLModuleSpec(
        module_class=cls,
        observation_space=gym.spaces.Box(-np.inf, np.inf, (n_obs,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
        model_config=mc,
    )


def _batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for i in range(0, n, size):
        yield order[i : i + size]


def _fit(net: Any, x: Any, target: Any, pick: Any, x_val: Any, target_val: Any, pick_val: Any,
         cfg: OfflineSupervisorConfig, rng: np.random.Generator, what: str) -> float:
    """Regress ``net(x)[pick]`` on ``target``; keep the weights of the best validation loss. Returns it."""
    import torch

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_of(xb, tb, pb):
        out = net(xb)
        return ((out.gather(1, pb[:, None])[:, 0] - tb) ** 2).mean()

    best, best_state = math.inf, None
    for epoch in range(cfg.epochs):
        net.train()
        for idx in _batches(len(x), cfg.batch_size, rng):
            opt.zero_grad()
            loss = loss_of(x[idx], target[idx], pick[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(loss_of(x_val, target_val, pick_val))
        if val < best:
            best, best_state = val, {k: v.clone() for k, v in net.state_dict().items()}
        print(f"[offline-supervisor] {what} epoch {epoch + 1}/{cfg.epochs}: validation loss {val:.4f}",
              file=sys.stderr, flush=True)
    net.load_state_dict(best_state)
    return best


def train(dataset: str | Path, out: str | Path, cfg: OfflineSupervisorConfig | None = None,
          seed: int = 0) -> dict[str, Any]:
    """Learn the supervisor from ``dataset`` and write ``out/module`` (an RLModule checkpoint) and
    ``out/gridrl_run.json``; returns the report (also in the run info, key ``offline``)."""
    import torch

    from rllib_configs.pi_residual import _normalise
    from rllib_configs.policy import write_run_info

    cfg = cfg or OfflineSupervisorConfig()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    raw = load_yaml(cfg.config)
    env_config = dict(raw["environment"]["env_config"])
    gate = float(env_config.get("preference_gate") or 0.0)
    decision_s = int(env_config.get("decision_s", 1))
    gamma_s = float(raw["training"]["gamma"]) ** (1.0 / decision_s)
    site, path = dataset_site(dataset)
    spec = _module_spec(raw, site)
    module = spec.build()
    feats = site_features(site)

    def samples(split_name: str) -> dict[str, Any]:
        split = load_split(dataset, split_name)
        pref = logged_preferences(split, site, cfg, gate)
        ret = discounted_returns(split, gamma_s)
        keep = np.flatnonzero(split.time_s % cfg.stride_s == 0)
        obs = np.concatenate([split.obs[keep], np.broadcast_to(feats, (keep.size, feats.size))], axis=1)
        obs_t = torch.as_tensor(np.nan_to_num(obs), dtype=torch.float32)
        with torch.no_grad():
            x = _normalise(module, obs_t)
        pick = np.searchsorted(np.asarray(cfg.choices), pref[keep])
        return {"obs": obs_t, "x": x, "ret": ret[keep], "pick": torch.as_tensor(pick),
                "rows": len(split), "by_choice": {f"{c:g}": int((pref == c).sum()) for c in cfg.choices}}

    tr, va = samples("train"), samples("val")
    for c, n in tr["by_choice"].items():
        if n < MIN_SHARE * tr["rows"]:
            raise ValueError(
                f"{dataset}: the logs show preference {c} in {n} of {tr['rows']} train rows (under "
                f"{MIN_SHARE:.0%}): they were not logged with a dithered preference, and nothing can be "
                "learned about it (`gridrl data generate --controller dithered_preference`)"
            )
    mean, std = float(tr["ret"].mean()), float(tr["ret"].std() + 1e-9)
    y_tr = torch.as_tensor((tr["ret"] - mean) / std, dtype=torch.float32)
    y_va = torch.as_tensor((va["ret"] - mean) / std, dtype=torch.float32)

    layers: list[Any] = []
    width = tr["x"].shape[1]
    for h in cfg.hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    q = torch.nn.Sequential(*layers, torch.nn.Linear(width, len(cfg.choices)))
    q_loss = _fit(q, tr["x"], y_tr, tr["pick"], va["x"], y_va, va["pick"], cfg, rng, "Q")

    zero = cfg.choices.index(0.0)
    choices = torch.as_tensor(cfg.choices, dtype=torch.float32)

    def greedy(x: Any) -> Any:
        with torch.no_grad():
            qs = q(x)
            adv = qs - qs[:, zero : zero + 1]
            best = adv.argmax(1)
            kept = adv.gather(1, best[:, None])[:, 0] > cfg.margin
            best = torch.where(kept, best, torch.full_like(best, zero))
        return choices[best]

    label_tr, label_va = greedy(tr["x"]), greedy(va["x"])

    class Mean(torch.nn.Module):  # the module's greedy preference before the clamp, with gradients
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, obs: Any) -> Any:
            from ray.rllib.core.columns import Columns

            return self.module._forward({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS][:, :1]

    zeros_tr = torch.zeros(len(label_tr), dtype=torch.long)
    zeros_va = torch.zeros(len(label_va), dtype=torch.long)
    distill_loss = _fit(Mean(), tr["obs"], label_tr, zeros_tr, va["obs"], label_va, zeros_va, cfg, rng,
                        "distillation")
    module.eval()
    with torch.no_grad():
        deployed = Mean()(va["obs"])[:, 0].clamp(-1, 1)
    agree = float((torch.argmin((deployed[:, None] - choices[None]).abs(), 1) ==
                   torch.searchsorted(choices, label_va)).float().mean())

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    module.save_to_path(str((out / "module").resolve()))
    env_config |= {"site": path}
    report = {
        "dataset": str(Path(dataset).resolve()),
        "rows": {"train": tr["rows"], "val": va["rows"]},
        "samples": {"train": int(len(y_tr)), "val": int(len(y_va))},
        "logged_preference_rows": {"train": tr["by_choice"], "val": va["by_choice"]},
        "return": {"gamma_per_s": gamma_s, "mean": mean, "std": std},
        "q_validation_mse": q_loss,
        "greedy_share": {f"{c:g}": float((label_va == c).float().mean()) for c in cfg.choices},
        "distillation_validation_mse": distill_loss,
        "distilled_agreement": agree,
        "settings": asdict(cfg),
        "seed": seed,
    }
    write_run_info(out, {
        "algorithm": ALGORITHM,
        "domain": "export",
        "config": str(Path(cfg.config).resolve()),
        "config_yaml": raw,
        "env": raw["environment"].get("env"),
        "env_config": env_config,
        "normalization": None,
        "seed": seed,
        "offline": report,
    })
    return report
