"""RLModules with the PI inside (PPO's, and CQL's below): the network learns a correction to the PI,
not the control law.

Trained from scratch, PPO had to rediscover an integrator to hold export near the setpoint, and in
18 minutes on 2 cores it did not (it exported 3.5x the PI). This module starts as the PI and learns
what to add to it. For every state it computes, in the graph:

* the PI's next targets, from the state vector alone (velocity form, as envs/controllers.py's
  ``PIController``): ``u = clip(sum(target_w_l) + kp * export_w_delta_1s + ki * export_error_w, 0,
  sum(available_w_l))``, spread over the phases like the PI (:func:`allocate_to_phases`, a torch port of
  envs/dispatch.py's, tested equal). The previous targets in the state stand in for the PI's integrator;
  with a zero correction the module's greedy targets are the PI's (tests/test_pi_residual.py);
* the mean action: those targets in [-1, 1] units, plus ``residual_scale`` times the network's output;
  the log-std: the network's, plus ``log(residual_scale)``, so exploration starts at
  ``residual_scale`` (e.g. 0.02 = 75 W per phase on the default site), not at the full action range.

The correction is a change on top of the PI's change: the next state's previous targets include it, so
what the network adds persists, and the PI's integral term works it off unless the network keeps it.

The module reads **raw** state vectors (the env's ``normalization`` must be off: the PI needs watts, and
the normaliser's +-10 std clip cuts large export jumps) and normalises them itself for its networks with
the statistics of ``normalization`` (default: envs/normalization_default.json), stored in the module's
weights. So the greedy graph (rllib_configs/policy.py ``deterministic_module``) is one self-contained
function of the raw state: the bundle exports it to ONNX unchanged, with ``input_normalised: false``.

Configured under ``rl_module.model_config.pi_residual`` (see rllib_configs/export/ppo_residual.yaml).

:class:`PIResidualCQLModule` and :class:`PIResidualIQLModule` do the same for offline CQL and IQL
(rllib_configs/export/cql_residual.yaml, iql_residual.yaml): their squashed Gaussian is centred on the PI's
action, so a policy trained from the PI's own logs starts as the PI instead of as a clone that drifts from
it in closed loop.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.cql.torch.default_cql_torch_rl_module import DefaultCQLTorchRLModule
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.utils.numpy import SMALL_NUMBER

from envs.config import from_mapping
from envs.controllers import PIConfig, gate_threshold_w
from envs.normalization import CLIP, ObsNormalizer
from envs.site import SITE_FEATURE_NAMES, SITE_FEATURE_SCALE
from envs.state_spec import FEAT, N_FEATURES, phase_permuted_columns
from rllib_configs.iql import IQLTorchModule

_TARGET = [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]
_EXPORT = [FEAT[f"export_w_l{p}"] for p in (1, 2, 3)]
_ACKED = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
_AVAIL = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]


@dataclass(frozen=True)
class ResidualConfig:
    """``rl_module.model_config.pi_residual``: the PI inside the module and the correction's scale."""

    max_power_per_phase_w: float = 7500.0
    """The site's ``control.max_power_per_phase_w`` (action -1..1 <-> 0..this, envs/actions.py)."""
    kp: float = PIConfig.kp
    """PI proportional gain (W per W), as envs/controllers.py's PIConfig."""
    ki: float = PIConfig.ki
    """PI integral gain (W per W per second)."""
    residual_scale: float = 0.02
    """The network's output (and its initial exploration std) in [-1, 1] action units."""
    normalization: str = "default"
    """Statistics the networks' inputs are normalised with: 'default' or a normalization.json path."""
    normalization_stats: dict[str, Any] | None = None
    """The content of that file, which the module writes here when it is first built: its checkpoint then
    carries the statistics in its constructor arguments and loads where the file is not (a checkpoint
    trained on another machine, a dataset since deleted). Not set by hand."""
    allocation: str = "residual"
    """'residual': the network's 3 outputs are per-phase corrections of the PI's targets. 'learned': the
    network steers how the PI's total is spread over the phases (see :func:`learned_targets`): output 0
    is the preference for the phases with continuous devices (``continuous_w``), output 1 a correction
    of the total; output 2 is unused. Zero outputs are the PI in both (with ``preference_bias`` 0).
    'supervisor': the env's action is that preference alone, held for the env's ``decision_s`` seconds
    while the PI runs (envs/export_env.py); the network's mean plus ``preference_bias`` is the action,
    its exploration starts at ``residual_scale``, and the deployed graph (:meth:`PIResidualPPOModule.
    deployed_action`) turns the greedy preference into the per-phase targets every second."""
    correct_total: bool = True
    """'learned': whether output 1 corrects the PI's total. False: the network only re-spreads the PI's own
    total over the phases (the allocation alone: a 2-core run that also corrected the total learned a bias
    of -30 W on overcast states and +30 W on clear ones, which cost more than its allocation gained)."""
    preference_bias: float = 0.0
    """'learned': added to output 0, so a zero network output starts at this preference: 0 = the PI's spread,
    1 = envs/controllers.py ContinuousFirstPI's (the continuous phase first)."""
    continuous_w: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """'learned': per phase, the power of its continuously modulating devices (water heaters), W: the
    site's layout, as its master knows it (the default site: 3000 W on L1)."""
    site_features: tuple[float, ...] = ()
    """'supervisor' trained with the env's ``site_features`` (its observations carry envs/site.py
    ``site_features`` after the state vector): the features of the site it is deployed on, set by
    rllib_configs/policy.py ``Policy.for_site``, which :meth:`PIResidualPPOModule.deployed_action` appends
    to the state vectors it is given."""
    phase_order: tuple[int, int, int] = (0, 1, 2)
    """'learned' and 'supervisor': which phase's per-phase state features (``*_l1..3``) the networks read in
    place of each phase of the site the policy was trained on (0-based; envs/controllers.py ``phase_map``,
    set by rllib_configs/policy.py ``Policy.for_site``). The networks learned what L1's features mean on
    a site whose water heater is on L1; on a site whose water heater is on L3 they read L3's there. Only
    the networks' inputs move: the PI and the spread act on the site's own phases. Training keeps (0, 1, 2),
    on the training site's layout (``draw_phases: false``)."""
    site_inputs: str = "all"
    """With site features in the observations, what the networks read of the site: 'all' (the features and
    the :func:`clear_sky_index`), 'clear_sky_index' (that alone: the weather whatever the PV size, and
    nothing of the site to fit to the few sites drawn in training) or 'outlook' (the features and the two
    :func:`outlook_inputs`: the half hour's clear-sky index and the day's PV outlook over the storage)."""
    prior: str = "none"
    """'supervisor': 'none' (the network's mean plus ``preference_bias`` is the preference), 'outlook'
    (plus :func:`outlook_prior`: +1 while the PV the rest of the day should bring is under
    ``prior_threshold`` times the site's tank storage, -1 above it; needs site features) or 'headroom'
    (the same rule over the room left in the tanks, :func:`headroom_outlook`: a water heater filled this
    morning no longer counts as storage for the afternoon). The network learns a correction of that rule
    instead of the whole decision."""
    prior_threshold: float = 2.0
    """``prior: outlook``: the outlook (kWh of PV left in the day per kWh of tank) where the rule turns
    from ``prior_dull`` (a dull day: the water heaters follow the surplus) to -1 (a sunny day: they keep
    their room for noon)."""
    prior_dull: float = 1.0
    """``prior: outlook``: the rule's preference on a dull day, in (0, 1]. At +1 the water heaters take
    the surplus of every phase first; below it, part stays on the phase that made it. Measured (README,
    "The imbalance, measured further"): 0.5 instead of 1 moves a dull day's export and phase imbalance
    little, since the water heater still takes what the other phases' on/off devices cannot follow."""
    preference_gate: float = 0.0
    """'supervisor': a positive preference holds only while the PI's total is under this many times
    ``start_power_w`` (envs/controllers.py ``gated_w``); 0: always. Must equal the env's
    ``env_config.preference_gate``, which runs the same rule in training."""
    start_power_w: float = math.inf
    """The smallest target that starts one of the site's heat pumps or EV chargers (envs/dispatch.py
    ``start_power_w``), W: the site's layout, as ``continuous_w`` (``Policy.for_site`` sets it)."""
    prior_sunny: float = -1.0
    """``prior: outlook`` or ``headroom``: the rule's preference on a sunny day (outlook at or above
    ``prior_threshold``), in [-1, 0]. At -1 the on/off and stepped devices claim twice their own phase's
    surplus and take the water heater's phase's morning surplus too, which keeps the water heater's room
    for noon but draws one phase's surplus into another's devices: the phase imbalance rises."""

    def __post_init__(self) -> None:
        if self.site_inputs not in ("all", "clear_sky_index", "outlook"):
            raise ValueError(f"site_inputs: 'all', 'clear_sky_index' or 'outlook', got {self.site_inputs!r}")
        if self.prior not in ("none", "outlook", "headroom"):
            raise ValueError(f"prior: 'none', 'outlook' or 'headroom', got {self.prior!r}")
        if not 0.0 < self.prior_dull <= 1.0:
            raise ValueError(f"prior_dull: a preference in (0, 1], got {self.prior_dull!r}")
        if self.preference_gate < 0 or self.start_power_w <= 0:
            raise ValueError("preference_gate must be >= 0 (0: no gate) and start_power_w > 0 W, got "
                             f"{self.preference_gate!r} and {self.start_power_w!r}")
        if not -1.0 <= self.prior_sunny <= 0.0:
            raise ValueError(f"prior_sunny: a preference in [-1, 0], got {self.prior_sunny!r}")
        if self.max_power_per_phase_w <= 0 or self.residual_scale <= 0 or self.kp < 0 or self.ki < 0:
            raise ValueError("pi_residual: max_power_per_phase_w and residual_scale must be > 0, gains >= 0")
        if self.allocation not in ("residual", "learned", "supervisor"):
            raise ValueError(f"allocation: 'residual', 'learned' or 'supervisor', got {self.allocation!r}")
        phase_permuted_columns(self.phase_order)  # raises on anything but a permutation of (0, 1, 2)
        if self.allocation != "residual" and (min(self.continuous_w) < 0 or max(self.continuous_w) <= 0):
            raise ValueError("continuous_w: allocation 'learned' needs a phase with continuous devices (W > 0)")


def allocate_to_phases(total: torch.Tensor, export_l: torch.Tensor, avail_l: torch.Tensor) -> torch.Tensor:
    """envs/dispatch.py's ``allocate_to_phases`` in torch (same formula; tests/test_pi_residual.py)."""
    total = total.clamp_min(0.0).unsqueeze(-1)
    avail = avail_l.clamp_min(0.0)
    own = torch.minimum(export_l.clamp_min(0.0), avail)
    own_sum = own.sum(-1, keepdim=True)
    first = own * torch.clamp(total / torch.where(own_sum > 0, own_sum, torch.ones_like(own_sum)), max=1.0)
    rest = (total - first.sum(-1, keepdim=True)).clamp_min(0.0)
    room = avail - first
    room_sum = room.sum(-1, keepdim=True)
    one = torch.ones_like(room_sum)
    second = room * torch.clamp(rest / torch.where(room_sum > 0, room_sum, one), max=1.0)
    return first + second


def pi_total(obs: torch.Tensor, kp: float, ki: float, correction_w: Any = 0.0) -> torch.Tensor:
    """The PI's next total (B,) in W from raw state vectors, plus ``correction_w`` before its clamp to
    [0, available]: the previous targets stand in for its integrator (velocity form)."""
    u = obs[..., _TARGET].sum(-1) + kp * obs[..., FEAT["export_w_delta_1s"]]
    u = u + ki * obs[..., FEAT["export_error_w"]]
    return torch.minimum((u + correction_w).clamp_min(0.0), obs[..., _AVAIL].clamp_min(0.0).sum(-1))


def pi_targets(obs: torch.Tensor, kp: float, ki: float) -> torch.Tensor:
    """The PI's next per-phase targets (B, 3) in W from raw state vectors (B, F), statelessly."""
    return allocate_to_phases(pi_total(obs, kp, ki), obs[..., _EXPORT] + obs[..., _ACKED], obs[..., _AVAIL])


def preference_spread(
    obs: torch.Tensor, total: torch.Tensor, pref: torch.Tensor, continuous_w: Any, gate_w: float = math.inf
) -> torch.Tensor:
    """envs/controllers.py's ``preference_spread`` in torch (same formula; tests/test_pi_residual.py):
    ``total`` (B,) spread over the phases, each phase's first-pass claim moved by ``pref`` (B, 1) from its
    own surplus (0) toward its available continuous power ``continuous_w`` (+1) or away from it (-1); a
    positive ``pref`` counts only while ``total`` is under ``gate_w`` (envs/controllers.py ``gated_w``)."""
    pref = torch.where((pref > 0) & (total.unsqueeze(-1) >= gate_w), torch.zeros_like(pref), pref)
    avail = obs[..., _AVAIL].clamp_min(0.0)
    own = torch.minimum((obs[..., _EXPORT] + obs[..., _ACKED]).clamp_min(0.0), avail)
    cont = torch.minimum(avail, torch.as_tensor(continuous_w, dtype=obs.dtype, device=obs.device))
    claim = own + pref * (cont - own)
    return allocate_to_phases(total, torch.minimum(claim.clamp_min(0.0), avail), avail)


def learned_targets(obs: torch.Tensor, out: torch.Tensor, cfg: ResidualConfig) -> torch.Tensor:
    """Per-phase targets (B, 3) in W with a learned allocation (``allocation: learned``).

    The PI's total (:func:`pi_total`) plus ``out[..., 1] * residual_scale`` (action units: of the bound; not
    with ``correct_total: false``) is spread by :func:`preference_spread` with the preference
    ``out[..., 0] + preference_bias``: at +1 a phase with continuous devices claims all of its available
    continuous power first and the others nothing (the planner's rule for low or broken surplus), at 0 each
    phase claims its own surplus (the PI's spread). ``out == 0`` gives the PI's targets exactly."""
    obs = torch.nan_to_num(obs.double())
    out = out.double()
    correction = out[..., 1] * cfg.residual_scale * cfg.max_power_per_phase_w if cfg.correct_total else 0.0
    u = pi_total(obs, cfg.kp, cfg.ki, correction)
    return preference_spread(obs, u, out[..., :1] + cfg.preference_bias, cfg.continuous_w)


def to_unit(targets: torch.Tensor, cfg: ResidualConfig) -> torch.Tensor:
    """Per-phase targets in W to action units ([-1, 1] over [0, max_power_per_phase_w]), in the graph:
    envs/actions.py ``to_unit`` without its clip."""
    return targets * (2.0 / cfg.max_power_per_phase_w) - 1.0


def pi_action(obs: torch.Tensor, cfg: ResidualConfig) -> torch.Tensor:
    """The PI's next targets as an action in [-1, 1] units (B, 3), from raw state vectors, in float64."""
    base = pi_targets(torch.nan_to_num(obs.double()), cfg.kp, cfg.ki)
    return to_unit(base, cfg)


def centred_on(base: torch.Tensor, net_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Action-distribution inputs (mean, log-std) centred on ``base``: ``base + scale * net mean`` and
    ``net log-std + log(scale)``; the one rule both modules below apply to their network's output."""
    mean, log_std = net_out.chunk(2, dim=-1)
    return torch.cat([base + scale * mean, log_std + math.log(scale)], dim=-1)


def _setup_residual(module: Any) -> None:
    """``module.residual`` (the typed settings) and the normalisation statistics as buffers ``obs_mean``,
    ``obs_std`` (saved with the weights), read from ``normalization_stats`` if set, else from the
    ``normalization`` file, whose content then goes into ``normalization_stats`` (ResidualConfig)."""
    mc = module.model_config if isinstance(module.model_config, dict) else asdict(module.model_config)
    raw = dict(mc.get("pi_residual") or {})
    module.residual = from_mapping(ResidualConfig, raw, path="pi_residual")
    stats = module.residual.normalization_stats
    if stats is None:
        norm = ObsNormalizer.load(module.residual.normalization)
        if isinstance(module.model_config, dict):  # what RLlib saves as the module's constructor arguments
            module.model_config["pi_residual"] = {**raw, "normalization_stats": norm.to_dict()}
    else:
        where = f"pi_residual.normalization_stats ({module.residual.normalization})"
        norm = ObsNormalizer.from_dict(stats, where)
    module.register_buffer("obs_mean", torch.as_tensor(np.asarray(norm.mean, np.float32)))
    module.register_buffer("obs_std", torch.as_tensor(np.asarray(norm.std, np.float32)))


_PV_W, _CLEAR_SKY = FEAT["pv_w"], FEAT["clear_sky_w_m2"]
_KWP = SITE_FEATURE_NAMES.index("pv_kwp")
_KWP_SCALE = float(SITE_FEATURE_SCALE[_KWP])
CSI_MAX = 1.5
"""The clear-sky index is clipped to [0, CSI_MAX] (cloud edges lift PV above clear sky for seconds)."""


def clear_sky_index(obs: torch.Tensor) -> torch.Tensor:
    """(B, 1): the site's PV power now over what its PV would give under a clear sky, ``pv_w / (pv_kwp x
    clear_sky_w_m2)`` (kWp x W/m2 = W at 1,000 W/m2), in [0, :data:`CSI_MAX`], for state vectors followed by
    envs/site.py ``site_features``. It tells overcast from clear whatever the site's PV size: without it a
    policy judges the weather by the watts, and an overcast day on a large PV site looks like a clear one on
    a small site (the supervisor chose +0.2 instead of +1 on such a day: README). Before sunrise (clear sky
    below 20 W/m2) it is 0."""
    return _csi(obs[..., _PV_W : _PV_W + 1], obs[..., _CLEAR_SKY : _CLEAR_SKY + 1], _site_kwp(obs))


def _site_kwp(obs: torch.Tensor) -> torch.Tensor:
    """(B, 1): the site's PV peak power, kWp, from the site features after the state vector."""
    return obs[..., N_FEATURES + _KWP : N_FEATURES + _KWP + 1] * _KWP_SCALE


def _csi(pv: torch.Tensor, sky: torch.Tensor, kwp: torch.Tensor) -> torch.Tensor:
    """``pv / (kwp x sky)`` (W over kWp x W/m2) in [0, :data:`CSI_MAX`]; 0 while ``sky`` is under 20 W/m2
    and for a missing PV reading."""
    csi = torch.nan_to_num(pv, nan=0.0) / torch.clamp(kwp * sky, min=1.0)
    return torch.where(sky > 20.0, csi, torch.zeros_like(csi)).clamp(0.0, CSI_MAX)


_PV_EWM, _SKY_EWM = FEAT["pv_w_ewm_30min"], FEAT["clear_sky_ewm_30min_w_m2"]
_SKY_REST = FEAT["clear_sky_rest_kwh_m2"]
_TANKS = [SITE_FEATURE_NAMES.index(n) for n in ("wh_kwh", "hp_kwh")]
OUTLOOK_MAX = 20.0
"""The outlook is clipped to [0, OUTLOOK_MAX] (a site with a small tank and a large PV on a clear morning)."""


def outlook_inputs(obs: torch.Tensor) -> torch.Tensor:
    """(B, 2) for state vectors followed by envs/site.py ``site_features``: the clear-sky index of the last
    half hour, ``pv_w_ewm_30min / (pv_kwp x clear_sky_ewm_30min_w_m2)`` in [0, :data:`CSI_MAX`] (0 while the
    half hour's clear sky is under 20 W/m2), and the outlook, that index times the site's clear-sky PV
    energy left in the day (``pv_kwp x clear_sky_rest_kwh_m2``) over its water heaters' and heat pumps' tank
    kWh, in [0, :data:`OUTLOOK_MAX`]: how many times its tanks the day's PV should still bring if the half
    hour's weather holds. The PV size and the tanks are what the site's file says; the rest is the state."""
    csi, pv_left = _pv_left_kwh(obs)
    wh, hp = _tank_kwh(obs)
    return torch.cat([csi, (pv_left / torch.clamp(wh + hp, min=1.0)).clamp(0.0, OUTLOOK_MAX)], dim=-1)


def _pv_left_kwh(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1) each: the last half hour's clear-sky index and the PV energy left in the day at that index,
    ``index x pv_kwp x clear_sky_rest_kwh_m2`` (kWh): the numerator of both outlooks."""
    kwp = _site_kwp(obs)
    csi = _csi(obs[..., _PV_EWM : _PV_EWM + 1], obs[..., _SKY_EWM : _SKY_EWM + 1], kwp)
    return csi, csi * kwp * obs[..., _SKY_REST : _SKY_REST + 1]


def _tank_kwh(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1) each: the site's water heaters' and heat pumps' tank kWh, from the site features."""
    wh, hp = (obs[..., N_FEATURES + i : N_FEATURES + i + 1] * float(SITE_FEATURE_SCALE[i]) for i in _TANKS)
    return wh, hp


_ACKED_KWH = [FEAT[f"acked_kwh_since_available_l{p}"] for p in (1, 2, 3)]
HEADROOM_FLOOR = 0.1
""":func:`headroom_outlook` counts at least this share of the water heaters' tank as room left: the
acknowledged energy is the master's count, not the tank's state (hot water drawn since makes room again)."""


def headroom_outlook(obs: torch.Tensor, continuous_w: Any) -> torch.Tensor:
    """(B, 1): :func:`outlook_inputs`' outlook over the room left in the tanks instead of their size: the
    water heaters' tank kWh less the energy acknowledged on their phases (``continuous_w`` > 0) since
    their power became available (state spec v2 ``acked_kwh_since_available_l*``), at least
    :data:`HEADROOM_FLOOR` of it, plus the heat pumps' tank kWh; in [0, :data:`OUTLOOK_MAX`]. With the
    tank's size alone, a water heater filled on a broken-cloud morning still reads as room for the
    afternoon and the rule keeps it first while the other devices' surplus goes out (a drawn site lost
    6 % against the PI there; README, "the outlook rule over the tanks' room left"). Only what the master
    counts: when a full tank's power becomes available again its count restarts at 0."""
    mask = (torch.as_tensor(continuous_w, dtype=obs.dtype, device=obs.device) > 0).to(obs.dtype)
    acked = (torch.nan_to_num(obs[..., _ACKED_KWH]) * mask).sum(-1, keepdim=True)
    wh, hp = _tank_kwh(obs)
    room = torch.maximum(wh - acked, HEADROOM_FLOOR * wh) + hp
    return (_pv_left_kwh(obs)[1] / torch.clamp(room, min=1.0)).clamp(0.0, OUTLOOK_MAX)


def outlook_prior(
    obs: torch.Tensor, threshold: float, dull: float = 1.0, continuous_w: Any = None, sunny: float = -1.0
) -> torch.Tensor:
    """(B, 1): the outlook rule's preference for state vectors followed by site features: ``dull`` (+1: the
    water heaters first) while :func:`outlook_inputs`' outlook is under ``threshold``, else ``sunny`` (-1:
    the on/off and stepped devices first). On a dull day
    the tanks can take what is left of the PV, and a water heater follows a low, broken surplus exactly; on
    a sunny day they cannot, and a water heater filled in the morning leaves the noon peak to export
    (tests/benchmarks/bench_preferences.py ``--outlook`` measures the rule alone). With ``continuous_w``
    (the water heaters' power per phase) the outlook is :func:`headroom_outlook`, over the room left."""
    if continuous_w is None:
        outlook = outlook_inputs(obs)[..., 1:2]
    else:
        outlook = headroom_outlook(obs, continuous_w)
    return torch.where(outlook < threshold, torch.full_like(outlook, dull), torch.full_like(outlook, sunny))


@functools.lru_cache(maxsize=8)
def _phase_index(order: tuple[int, int, int]) -> torch.Tensor:
    """envs/state_spec.py ``phase_permuted_columns`` as an index tensor, built once per order: a deployed
    policy indexes its state with it every second."""
    return torch.as_tensor(phase_permuted_columns(order), dtype=torch.long)


def _normalise(module: Any, obs: torch.Tensor) -> torch.Tensor:
    """The state vector normalised; with the site's features after it (the env's ``site_features``): those,
    as they are, and the :func:`clear_sky_index` (one more column than the observation: see
    :func:`_widen_for_site`)."""
    state = obs[..., :N_FEATURES]
    if module.residual.phase_order != (0, 1, 2):  # the training site's phases, as this site has them
        state = state[..., _phase_index(module.residual.phase_order)]
    z = (state - module.obs_mean) / module.obs_std
    z = torch.clamp(torch.nan_to_num(z, nan=0.0), -CLIP, CLIP)
    if obs.shape[-1] == N_FEATURES:
        return z
    if module.residual.site_inputs == "outlook":  # the outlook over its clip: about 0..1, as the rest
        scale = torch.tensor([1.0, OUTLOOK_MAX / 4.0], dtype=obs.dtype, device=obs.device)
        extra = outlook_inputs(obs) / scale
        return torch.cat([z, obs[..., N_FEATURES:], extra.to(z.dtype)], dim=-1)
    csi = clear_sky_index(obs).to(z.dtype)
    if module.residual.site_inputs == "clear_sky_index":
        return torch.cat([z, csi], dim=-1)
    return torch.cat([z, obs[..., N_FEATURES:], csi], dim=-1)


def _widen_for_site(module: Any) -> None:
    """A module whose observations carry site features reads other columns than they have (:func:`_normalise`:
    the clear-sky index more, and the features themselves or not, by ``site_inputs``): its catalog is
    rebuilt for the width :func:`_normalise` gives before the networks are built."""
    space = module.observation_space
    if module.catalog is None or space.shape[-1] <= N_FEATURES:
        return
    width = _normalise(module, torch.zeros(1, space.shape[-1])).shape[-1]
    wider = gym.spaces.Box(-np.inf, np.inf, (width,), np.float32)
    module.catalog = type(module.catalog)(
        observation_space=wider, action_space=module.action_space, model_config_dict=module.model_config
    )


class PIResidualPPOModule(DefaultPPOTorchRLModule):
    """PPO's default torch module (encoder, pi and vf heads) around the PI (see the module docstring)."""

    def setup(self) -> None:
        _setup_residual(self)
        if self.residual.prior != "none" and self.observation_space.shape[-1] <= N_FEATURES:
            raise ValueError(f"pi_residual.prior: {self.residual.prior!r} reads the site's PV size and "
                             "tanks: set env_config.site_features: true")
        _widen_for_site(self)
        super().setup()

    def _normalised(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, Columns.OBS: _normalise(self, batch[Columns.OBS])}

    def _with_pi(self, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        cfg = self.residual
        logits = out[Columns.ACTION_DIST_INPUTS]
        if cfg.allocation == "supervisor":  # the action: the PI's preference (envs/export_env.py decision_s)
            mean, log_std = logits.chunk(2, dim=-1)
            mean = mean + cfg.preference_bias
            if cfg.prior != "none":
                room = cfg.continuous_w if cfg.prior == "headroom" else None
                prior = outlook_prior(batch[Columns.OBS], cfg.prior_threshold, cfg.prior_dull, room,
                                      cfg.prior_sunny)
                mean = mean + prior.to(mean.dtype)
            log_std = log_std + math.log(cfg.residual_scale)
            out[Columns.ACTION_DIST_INPUTS] = torch.cat([mean, log_std], dim=-1)
            return out
        if cfg.allocation == "learned":
            net_mean, log_std = logits.chunk(2, dim=-1)
            mean = to_unit(learned_targets(batch[Columns.OBS], net_mean, cfg), cfg)
            out[Columns.ACTION_DIST_INPUTS] = torch.cat(
                [mean.to(logits.dtype), log_std + math.log(cfg.residual_scale)], dim=-1
            )
            return out
        base = pi_action(batch[Columns.OBS], cfg).to(logits.dtype)
        out[Columns.ACTION_DIST_INPUTS] = centred_on(base, logits, cfg.residual_scale)
        return out

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._with_pi(batch, super()._forward(self._normalised(batch), **kwargs))

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._with_pi(batch, super()._forward_train(self._normalised(batch), **kwargs))

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Any:
        return super().compute_values(self._normalised(batch) if embeddings is None else batch, embeddings)

    def greedy_preference(self, obs: torch.Tensor) -> torch.Tensor:
        """``allocation: supervisor``: the greedy dispatch preference (B, 1) in [-1, 1] for raw state vectors
        (B, F), followed by the deployed site's features (``site_features``, :meth:`Policy.for_site
        <rllib_configs.policy.Policy.for_site>`) when the policy was trained with them."""
        out = self.forward_inference({Columns.OBS: self.site_inputs(obs)})
        return out[Columns.ACTION_DIST_INPUTS][..., :1].clamp(-1.0, 1.0)

    def site_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """``allocation: supervisor``: raw state vectors (B, F) as the networks read them: followed by the
        deployed site's features where the module was built for them (:meth:`greedy_preference`)."""
        cfg = self.residual
        if cfg.allocation != "supervisor":
            raise ValueError(f"greedy_preference: allocation 'supervisor' only, not {cfg.allocation!r}")
        n_site = int(self.observation_space.shape[-1]) - N_FEATURES
        inputs = obs[..., :N_FEATURES]
        if n_site > 0:  # trained on drawn sites with their features: this one's
            if len(cfg.site_features) != n_site:
                raise ValueError(
                    f"this policy reads {n_site} site features after the state vector and was told "
                    f"{len(cfg.site_features)}: rllib_configs/policy.py Policy.for_site(site) tells it the "
                    "site it runs on"
                )
            site = torch.as_tensor(cfg.site_features, dtype=obs.dtype, device=obs.device)
            inputs = torch.cat([inputs, site.expand(*obs.shape[:-1], n_site)], dim=-1)
        return inputs

    def deployed_action(self, obs: torch.Tensor) -> torch.Tensor:
        """``allocation: supervisor``: the per-phase targets (B, 3) in [-1, 1] units that the site runs every
        second: the PI's total spread with the greedy preference for this state (envs/controllers.py
        ``preference_targets``, which the env ran in training). rllib_configs/policy.py
        ``deterministic_module`` exports it for supervisors; the other allocations' greedy action already
        is the targets."""
        cfg = self.residual
        pref = self.greedy_preference(obs).double()
        raw = torch.nan_to_num(obs[..., :N_FEATURES].double())
        gate_w = gate_threshold_w(cfg.start_power_w, cfg.preference_gate)
        targets = preference_spread(raw, pi_total(raw, cfg.kp, cfg.ki), pref, cfg.continuous_w, gate_w)
        return to_unit(targets, cfg).to(obs.dtype)


# The PI's action is held as far inside the bounds as RLlib's squashed Gaussian holds a logged action
# (ray.rllib.utils.numpy.SMALL_NUMBER in its _unsquash): a logged 0 W and the PI's 0 W then have the same
# pre-tanh value. With 1e-4 here the logs' 0 W (all three phases in 53 % of the seconds) sat 2.3 pre-tanh
# units below the PI's, and residual IQL learned that offset as its correction: near 0 W it held every
# target at a few watts, the PI's integrator read them back, and in closed loop it commanded nothing
# (README, "IQL and residual CQL at GPU budgets"). 0 W and the full range come back within 0.004 W.
_SQUASH_EDGE = 1.0 - SMALL_NUMBER


class _NormalisingPiEncoder(torch.nn.Module):
    """SAC's pi encoder fed normalised states; its output carries the PI's action (pre-tanh) as 3 extra
    columns, for :class:`_ResidualPiHead`. RLlib's SAC/CQL code calls ``pi(pi_encoder(batch))`` inline in
    several places: wrapping the pair is the one place all of them pass through."""

    def __init__(self, inner: torch.nn.Module, normalise: Any, cfg: ResidualConfig) -> None:
        super().__init__()
        self.inner, self.normalise, self.cfg = inner, normalise, cfg

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        feats = self.inner({**batch, Columns.OBS: self.normalise(obs)})[ENCODER_OUT]
        # The squashed Gaussian's action is tanh(pre-tanh) on SAC's [-1, 1] bounds: the PI's action
        # there is atanh of it (kept inside +-_SQUASH_EDGE: 0 W and the full range are common PI targets).
        a = pi_action(obs, self.cfg).clamp(-_SQUASH_EDGE, _SQUASH_EDGE)
        base = 0.5 * (torch.log1p(a) - torch.log1p(-a))  # atanh, spelled so that ONNX opset 17 exports it
        return {ENCODER_OUT: torch.cat([feats, base.to(feats.dtype)], dim=-1)}


class _ResidualPiHead(torch.nn.Module):
    """SAC's pi head: (mean, log_std) = (PI's pre-tanh action + scale * net mean, net log_std + log scale)."""

    def __init__(self, inner: torch.nn.Module, scale: float, n_actions: int) -> None:
        super().__init__()
        self.inner, self.scale, self.n_actions = inner, scale, n_actions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, base = x[..., : -self.n_actions], x[..., -self.n_actions :]
        return centred_on(base, self.inner(feats), self.scale)


class _ResidualSACPolicy:
    """The PI inside an offline SAC-family module's policy (CQL's, IQL's): its squashed Gaussian is centred on
    the PI's action (in pre-tanh units) plus ``residual_scale`` times the network's output, so the policy
    starts as the PI and offline training learns a correction, not the control law; no BC stage is needed.
    The module reads raw states and normalises them for its networks (policy, Q and V) itself, with the
    ``normalization`` statistics. Mixed in before the RLlib module class."""

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        name = type(self).__name__
        _setup_residual(self)
        if not isinstance(self.action_space, gym.spaces.Box) or self.action_space.shape != (3,):
            raise ValueError(f"{name}: the export domain's 3 per-phase targets only")
        if not (np.all(self.action_space.low == -1.0) and np.all(self.action_space.high == 1.0)):
            raise ValueError(f"{name}: the action space must be [-1, 1] (envs/actions.py)")
        self.pi_encoder = _NormalisingPiEncoder(self.pi_encoder, self.normalised, self.residual)
        self.pi = _ResidualPiHead(self.pi, self.residual.residual_scale, 3)

    def normalised(self, obs: torch.Tensor) -> torch.Tensor:
        return _normalise(self, obs)

    def _qf_forward_train_helper(self, batch: dict[str, Any], encoder: Any, head: Any,
                                 squeeze: bool = True) -> Any:
        return super()._qf_forward_train_helper(  # type: ignore[misc]
            {**batch, Columns.OBS: self.normalised(batch[Columns.OBS])}, encoder, head, squeeze=squeeze
        )


class PIResidualCQLModule(_ResidualSACPolicy, DefaultCQLTorchRLModule):
    """CQL's (SAC's) default torch module with the PI inside its policy (:class:`_ResidualSACPolicy`), as
    PIResidualPPOModule's (rllib_configs/export/cql_residual.yaml)."""


class PIResidualIQLModule(_ResidualSACPolicy, IQLTorchModule):
    """IQL's module (rllib_configs/iql.py) with the PI inside its policy (:class:`_ResidualSACPolicy`;
    rllib_configs/export/iql_residual.yaml). IQL clones the logged actions weighted by their advantage; a
    plain clone of the PI drifted in closed loop (README, "IQL and residual CQL at GPU budgets"). Here the
    clone is of the logged correction to the PI, and a zero correction is the PI. V reads normalised states
    too."""

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Any:
        if embeddings is None:
            batch = {**batch, Columns.OBS: self.normalised(batch[Columns.OBS])}
        return super().compute_values(batch, embeddings)
