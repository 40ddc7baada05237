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
   ahead), from the dataset's rewards (offline_data/transitions.py: the env's reward on measured powers),
   each episode's weighted as the supervisor's env weighs a day (``reward_floor_kwh``: :func:`day_scale`).
3. **One-step policy improvement** (Brandfonbrener et al., NeurIPS 2021, "Offline RL without off-policy
   evaluation"): ``Q(s, c)``, the return of holding preference ``c`` from state ``s`` with the logged
   (random) preferences after it, regressed on the returns of the windows' seconds: an ensemble of
   ``members`` networks (a head per choice), each fitted on its own bootstrap of the logged episodes and
   stopped at its best validation loss.
4. **A pessimistic choice** (as ensemble-based offline RL keeps to what the data supports): against a
   baseline preference, by default the outlook rule the PPO supervisor starts from (``baseline: rule``,
   rllib_configs/pi_residual.py ``outlook_prior``; ``pi``: 0, the PI's own spread), each choice's
   advantage counts as the members' mean less ``kappa`` times their spread, and the best is taken only where
   that exceeds ``margin`` return standard deviations; elsewhere the baseline's. Where the members disagree
   (states the logs did not show, a site other than the logged one) the baseline stays. The ensemble lives
   in the supervisor's RLModule (:class:`OfflineSupervisorModule`, the settings and deployed graph of
   rllib_configs/pi_residual.py ``PIResidualPPOModule``), saved as an RLModule checkpoint with a
   ``gridrl_run.json`` beside it: ``gridrl benchmark``, ``gridrl export`` (the choice is in the ONNX
   graph), Serve and the edge runtime load it as they load a trained supervisor.

What it measured (README, "The offline supervisor"): on 7 days of one site's logs the ensemble hardly moves
off the rule (validation: 25.7 % less export than the PI, worst case -1.81 %; the rule alone 25.7 %,
-1.51 %); with the PI's spread as its baseline it gains only 7.7 % on the mean and its worst case falls
to -10.1 % (an unseen site's winter day): what the Q networks learn from 7 June days of one site does not
carry to other sites and seasons, and the rule's structure does.

Deterministic in ``seed`` (torch on one thread).
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
from envs.dynamics.data import SplitData, load_split, site_path, split_dir
from envs.site import SITE_FEATURE_NAMES, Site, load_site, site_features
from envs.state_spec import FEAT, N_FEATURES
from rllib_configs.pi_residual import PIResidualPPOModule, _normalise

DEFAULT_CONFIG = "rllib_configs/export/ppo_supervisor.yaml"
ALGORITHM = "offline_supervisor"
Q_INPUTS = ("compact", "state")
_ACKED = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
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
    """Passes over the train split's samples, for each Q network (the best validation loss is kept)."""
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-4
    q_inputs: str = "state"
    """What the Q networks read: 'state', the whole normalised state vector with the site's features (as
    the supervisor's PPO networks read it), or 'compact', a few quantities that mean the same on any site
    and day (:meth:`OfflineSupervisorModule.q_features`: the half hour's clear-sky index, the outlook over
    the tanks and over their room left, the solar time, the PV over its peak, the PI's total over the power
    that starts a device). On the validation suite (seed 11) 'compact' did no better (README, "The offline
    supervisor")."""
    baseline: str = "rule"
    """Where the Q ensemble is not sure of a better preference: 'rule', the outlook rule the supervisor's
    PPO starts from (its config's ``pi_residual.prior``), or 'pi', preference 0 (the PI's own spread)."""
    members: int = 5
    """Q networks, each fitted on its own bootstrap of the logged episodes."""
    kappa: float = 1.0
    """Pessimism: a preference's advantage over the baseline's counts as the members' mean less ``kappa``
    times their standard deviation, so where they disagree (states unlike the logs', another site) the
    baseline stays."""
    margin: float = 0.1
    """Another preference than the baseline's is chosen only where that pessimistic advantage exceeds this
    many return standard deviations (inf: the baseline alone)."""

    def __post_init__(self) -> None:
        if 0.0 not in self.choices or any(not -1.0 <= c <= 1.0 for c in self.choices):
            raise ValueError(f"choices: preferences within [-1, 1], 0 among them, got {list(self.choices)}")
        for name in ("period_s", "stride_s", "epochs", "batch_size", "members"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.baseline not in ("rule", "pi"):
            raise ValueError(f"baseline: 'rule' or 'pi', got {self.baseline!r}")
        if self.q_inputs not in Q_INPUTS:
            raise ValueError(f"q_inputs: one of {', '.join(Q_INPUTS)}, got {self.q_inputs!r}")
        if self.margin < 0 or self.informative_w < 0 or self.kappa < 0:
            raise ValueError(f"margin, informative_w, kappa: must be >= 0, got {self.margin}, "
                             f"{self.informative_w}, {self.kappa}")


class OfflineSupervisorModule(PIResidualPPOModule):
    """The supervisor's RLModule (its settings, normalisation and deployed graph: PIResidualPPOModule) whose
    greedy preference is chosen by the offline Q ensemble it carries (``model_config.offline_q``):
    :meth:`choose` on the inputs its networks read. Its PPO heads are not trained; ``deployed_action`` (what
    ``gridrl export`` writes as ONNX, what the benchmark, Serve and the edge runtime run) goes through
    :meth:`greedy_preference`, so the deployed controller is the choice itself, on any site's states."""

    def setup(self) -> None:
        import torch

        super().setup()
        q = dict(self.model_config["offline_q"])
        choices = [float(c) for c in q["choices"]]
        self.q_margin, self.q_kappa = float(q["margin"]), float(q["kappa"])
        self.q_inputs = str(q.get("inputs", "state"))
        self.q_baseline = str(q.get("baseline", "pi"))
        if self.q_baseline == "rule":
            rule = (self.residual.prior_dull, self.residual.prior_sunny)
            if self.residual.prior == "none" or any(p not in choices for p in rule):
                raise ValueError(
                    "offline_q.baseline 'rule' needs pi_residual.prior 'outlook' or 'headroom' whose "
                    f"preferences (prior_dull, prior_sunny: {rule}) are among the choices {choices}"
                )
        self.register_buffer("q_choices", torch.as_tensor(choices, dtype=torch.float32))
        with torch.no_grad():
            width = int(self.q_features(torch.zeros(1, self.observation_space.shape[-1])).shape[-1])
        members = []
        for _ in range(int(q["members"])):
            layers: list[Any] = []
            w = width
            for h in q["hidden"]:
                layers += [torch.nn.Linear(w, int(h)), torch.nn.ReLU()]
                w = int(h)
            members.append(torch.nn.Sequential(*layers, torch.nn.Linear(w, len(choices))))
        self.q_members = torch.nn.ModuleList(members)

    def q_features(self, obs: Any) -> Any:
        """(B, W) what the Q networks read from raw state vectors followed by the site's features:
        ``q_inputs`` 'state' (the normalised state, as the PPO networks read it) or 'compact': the half
        hour's clear-sky index, the outlook over the tanks and over their room left (rllib_configs/
        pi_residual.py ``outlook_inputs``, ``headroom_outlook``; over OUTLOOK_MAX), the solar time (sin,
        cos), the half hour's PV over the site's peak, and the PI's total over the power that starts one of
        the site's devices (clipped to 4; 0 on a site with none)."""
        import torch

        from rllib_configs.pi_residual import (
            OUTLOOK_MAX,
            _site_kwp,
            headroom_outlook,
            outlook_inputs,
            pi_total,
        )

        if self.q_inputs == "state":
            return _normalise(self, obs)
        cfg = self.residual
        raw = torch.nan_to_num(obs)
        csi_outlook = outlook_inputs(raw)
        room = headroom_outlook(raw, cfg.continuous_w)
        pv = raw[..., FEAT["pv_w_ewm_30min"]] / torch.clamp(_site_kwp(raw)[..., 0] * 1000.0, min=1.0)
        start = cfg.start_power_w if math.isfinite(cfg.start_power_w) and cfg.start_power_w > 0 else math.inf
        total = pi_total(raw[..., :N_FEATURES].double(), cfg.kp, cfg.ki).to(raw.dtype)
        return torch.stack([
            csi_outlook[..., 0], csi_outlook[..., 1] / OUTLOOK_MAX, room[..., 0] / OUTLOOK_MAX,
            raw[..., FEAT["solar_time_sin"]], raw[..., FEAT["solar_time_cos"]], pv.clamp(0.0, 1.5),
            (total / start).clamp(0.0, 4.0),
        ], dim=-1)  # fmt: skip

    def baseline_preference(self, obs: Any) -> Any:
        """(B,) the preference kept where the Q ensemble is not sure of a better one, for raw state vectors
        followed by the site's features: 0 (``baseline: pi``, the PI's own spread) or the outlook rule's
        (``baseline: rule``: rllib_configs/pi_residual.py ``outlook_prior``, the supervisor's prior)."""
        import torch

        from rllib_configs.pi_residual import outlook_prior

        if self.q_baseline == "pi":
            return torch.zeros(obs.shape[:-1], dtype=obs.dtype, device=obs.device)
        cfg = self.residual
        room = cfg.continuous_w if cfg.prior == "headroom" else None
        return outlook_prior(torch.nan_to_num(obs), cfg.prior_threshold, cfg.prior_dull, room,
                             cfg.prior_sunny)[..., 0]  # fmt: skip

    def choose(self, x: Any, base: Any) -> Any:
        """(B,) the preference for Q inputs ``x`` (B, W) where ``base`` (B,) is the baseline's: the choice
        whose advantage over the baseline's, the members' mean less ``kappa`` x their std, is largest, if
        it exceeds ``margin``; else the baseline's."""
        import torch

        qs = torch.stack([m(x) for m in self.q_members])  # (M, B, C)
        base_idx = (base[..., None] - self.q_choices).abs().argmin(-1)  # the baseline's column
        adv = qs - qs.gather(-1, base_idx[None, :, None].expand(qs.shape[0], -1, 1))
        low = adv.mean(0)
        if len(self.q_members) > 1:
            low = low - self.q_kappa * adv.std(0)
        best = low.argmax(-1)
        kept = low.gather(-1, best[..., None])[..., 0] > self.q_margin
        return torch.where(kept, self.q_choices[best], self.q_choices[base_idx])

    def greedy_preference(self, obs: Any) -> Any:
        raw = self.site_inputs(obs)
        x = self.q_features(raw)
        base = self.baseline_preference(raw).to(self.q_choices.dtype)
        return self.choose(x.to(self.q_choices.dtype), base)[..., None].to(obs.dtype)


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


def day_scale(split: SplitData, floor_kwh: float | None) -> np.ndarray:
    """(N,) the env's ``reward_floor_kwh`` weight of each row's episode, ``floor / (surplus kWh + floor)``,
    with the surplus (PV less base load, summed over the phases, at least 0 every second) read from the
    logged state as the export plus the acknowledged controlled load: a dull day's rewards weigh as a clear
    day's, as in the supervisor's training (envs/export_env.py). 1 with ``floor_kwh`` None."""
    if floor_kwh is None:
        return np.ones(len(split))
    surplus_w = np.clip(split.obs[:, FEAT["export_w"]] + split.obs[:, _ACKED].sum(-1), 0.0, None)
    kwh = np.bincount(split.episode, weights=np.nan_to_num(surplus_w)) / 3.6e6
    return floor_kwh / (kwh[split.episode] + floor_kwh)


def discounted_returns(split: SplitData, gamma_s: float, scale: np.ndarray | None = None) -> np.ndarray:
    """(N,) every row's discounted return to the end of its contiguous run (one episode, t + 1 per row), of
    the rewards times ``scale`` (:func:`day_scale`) where given."""
    r = split.rewards.astype(np.float64) * (1.0 if scale is None else scale)
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


def _module_spec(raw: dict[str, Any], site: Site, cfg: OfflineSupervisorConfig) -> Any:
    """The offline supervisor's RLModule spec: the training config's module settings, told the logged site,
    with the Q ensemble's (``offline_q``)."""
    import gymnasium as gym
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_configs.pi_residual import ResidualConfig

    rl = raw["rl_module"]
    mc = json.loads(json.dumps(rl.get("model_config") or {}))
    mc["offline_q"] = {"choices": list(cfg.choices), "hidden": list(cfg.hidden), "members": cfg.members,
                       "margin": cfg.margin, "kappa": cfg.kappa, "inputs": cfg.q_inputs,
                       "baseline": cfg.baseline}  # fmt: skip
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
        module_class=OfflineSupervisorModule,
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

    from rllib_configs.policy import write_run_info

    cfg = cfg or OfflineSupervisorConfig()
    for name in ("train", "val"):  # before anything is built: a folder that is not a dataset is named
        split_dir(dataset, name)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    raw = load_yaml(cfg.config)
    env_config = dict(raw["environment"]["env_config"])
    gate = float(env_config.get("preference_gate") or 0.0)
    decision_s = int(env_config.get("decision_s", 1))
    gamma_s = float(raw["training"]["gamma"]) ** (1.0 / decision_s)
    site, path = dataset_site(dataset)
    module = _module_spec(raw, site, cfg).build()
    feats = site_features(site)

    def samples(split_name: str) -> dict[str, Any]:
        split = load_split(dataset, split_name)
        pref = logged_preferences(split, site, cfg, gate)
        ret = discounted_returns(split, gamma_s, day_scale(split, env_config.get("reward_floor_kwh")))
        keep = np.flatnonzero(split.time_s % cfg.stride_s == 0)
        obs = np.concatenate([split.obs[keep], np.broadcast_to(feats, (keep.size, feats.size))], axis=1)
        obs_t = torch.as_tensor(np.nan_to_num(obs), dtype=torch.float32)
        with torch.no_grad():
            x = module.q_features(obs_t)
        pick = np.searchsorted(np.asarray(cfg.choices), pref[keep])
        return {"x": x, "obs": obs_t, "ret": ret[keep], "pick": torch.as_tensor(pick),
                "episode": split.episode[keep],
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

    losses = []
    episodes = np.unique(tr["episode"])
    for m, q in enumerate(module.q_members):
        # each member on its own bootstrap of the train split's episodes (days, or parts of days)
        drawn = rng.choice(episodes, episodes.size, replace=True) if cfg.members > 1 else episodes
        rows = np.concatenate([np.flatnonzero(tr["episode"] == e) for e in drawn])
        losses.append(_fit(q, tr["x"][rows], y_tr[rows], tr["pick"][rows], va["x"], y_va, va["pick"], cfg,
                           rng, f"Q member {m + 1}/{cfg.members}"))  # fmt: skip
    module.eval()
    with torch.no_grad():
        chosen = module.choose(va["x"], module.baseline_preference(va["obs"]))
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
        "q_validation_mse": losses,
        "chosen_on_validation_states": {f"{c:g}": float((chosen == c).float().mean()) for c in cfg.choices},
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
