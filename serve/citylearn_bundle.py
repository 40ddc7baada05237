"""CityLearn policies as bundles: export, loading with numpy + onnxruntime alone, and serving.

A CityLearn bundle is a bundle (serve/bundle.py: the same format, hashes and checks) whose manifest says
``domain: citylearn``::

    BUNDLE/manifest.json   what the controller is, and everything needed to run and check it
    BUNDLE/policy.onnx     trained policies only: the deterministic policy, encoded observation -> [-1, 1]

``controller`` is ``onnx`` (a checkpoint of ``gridrl citylearn train``: :func:`export_citylearn_checkpoint`)
or ``rbc`` (the rule-based controller, envs/citylearn/devices.py ``rbc_action``, parameters only:
:func:`export_citylearn_rbc`). Beside the fields every bundle has (``format``, ``controller``, ``name``,
``domain``, ``algorithm``, ``gridrl_version``, ``created_at``, ``files``, ``manifest_sha256``):

* ``observation``: the raw central observation vector a request sends (CityLearn's
  ``env.observations[0]``): ``names`` in order, ``n``, ``sha256`` and ``version`` (envs/citylearn/
  observations.py ``raw_spec``; a request's ``spec_version`` must equal it), the ``schema`` and simulation
  ``window`` it was taken from, and ``encoding``: how the policy's input is made from it (``normalized``:
  CityLearn's periodic + min-max scaling with the training env's limits; ``clipped``), applied in numpy
  before the graph (:class:`envs.citylearn.observations.ObservationEncoder`, the env's own code);
* ``action``: ``names`` in order, per-slot bounds ``low``/``high`` (battery [-1, 1]; charger [0, 1], or
  [-1, 1] where it can discharge a vehicle), their unit, and ``mode``: ``direct`` (the graph's output is
  the action) or ``rbc_residual`` (the action is ``clip(RBC(raw) + residual_scale * output, low, high)``,
  the env's ``action_mode``, with the RBC run on the raw observation), and ``residual_groups``: null (one
  output per slot), or each slot's index into the outputs (``residual_per: kind``: one per kind of device);
* ``devices``: envs/citylearn/devices.py ``DeviceTable.to_dict()``: each battery's capacity, nominal power,
  depth of discharge, efficiency, each charger's powers and efficiency, the action slot of each and where
  its readings sit in the raw vector (what the RBC and the safety wrapper read);
* ``reward``: the reward the policy was trained (or the RBC evaluated) under: the function and its
  weights and scales (envs/citylearn/reward.py ``RewardConfig``: CO2 0.50, solar 0.20, cost 0.15, EV 0.10,
  peak 0.05 and the EV constraint by default);
* ``safety``: :class:`serve.citylearn_safety.CityLearnSafetyLimits`;
* ``kpis``: the KPIs known at export (``{controller: {kpi: value}}``: a run's held-out evaluation written
  by ``gridrl citylearn train --evaluate``, or a ``--metrics`` file), with ``targets`` where the run
  wrote them; null otherwise, and ``kpis_source`` says where they came from;
* ``training``: checkpoint, seed, config and env config, last training metrics (null for the RBC);
  ``onnx``: file, names, opset, the ONNX-vs-torch parity measured at export on ``parity.states`` encoded
  observations, and known answers that loading re-checks (serve/bundle.py ``export_onnx``).

:func:`load_citylearn_bundle` checks the shared things (serve/bundle.py ``read_manifest``,
``check_files``, ``verify_onnx``), then that the observation, action and device tables agree with each
other, and raises :class:`serve.bundle.BundleError` naming the file and the field. It imports neither
torch, nor Ray, nor CityLearn. The fleet app (serve/server.py) serves such a bundle through
:class:`CityLearnRuntime` (registered for the ``citylearn`` domain in serve/domains.py): a request's
``state`` is the raw vector with ``spec_version`` = ``observation.version``, the answer's ``action_w`` the
action vector after :class:`serve.citylearn_safety.CityLearnSafetyWrapper`. The edge runtime for CityLearn
is serve/citylearn_edge.py.

Export needs torch, Ray's RLModule and CityLearn (it builds the run's training env, for its scaling and
device table); they are imported inside the export functions only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from envs.citylearn.devices import SOC_MARGIN, DeviceTable
from envs.citylearn.observations import ObservationEncoder, raw_spec
from envs.config import ConfigError
from serve.bundle import (
    FORMAT,
    MANIFEST,
    ONNX_FILE,
    BundleError,
    LoadedBundle,
    OnnxPolicy,
    bundle_error,
    check_files,
    export_onnx,
    gridrl_version,
    prepare_out,
    read_manifest,
    training_metrics,
    verify_onnx,
    write_manifest,
)
from serve.citylearn_safety import CityLearnSafetyLimits, CityLearnSafetyWrapper, RBCPolicy
from serve.domains import model_version, register_domain, register_exporter
from serve.safety import VIOLATIONS
from serve.session import Served

DOMAIN = "citylearn"
CONTROLLERS = ("onnx", "rbc")
HELD_OUT = "heldout"
"""Folder beside a run's checkpoints where ``gridrl citylearn train --evaluate`` writes its KPIs."""
ACTION_UNIT = (
    "share of the device's power limit per step: a battery's nominal power (+ charges, - discharges); a "
    "charger's maximum charging power (negative: its maximum discharging power, V2G)"
)


# --- policies (raw observation (n_raw,) -> action (n_actions,) in [-1, 1])


class CityLearnOnnxPolicy:
    """The exported policy: encode the raw observation (numpy), run the graph, add the RBC if residual."""

    def __init__(
        self,
        onnx: OnnxPolicy,
        encoder: ObservationEncoder,
        devices: DeviceTable,
        residual_scale: float | None = None,
        residual_groups: Sequence[int] | None = None,
    ):
        self.onnx, self.encoder, self.devices, self.residual_scale = onnx, encoder, devices, residual_scale
        self.groups = None if residual_groups is None else np.asarray(residual_groups, dtype=np.int64)
        self.rbc = RBCPolicy(devices) if residual_scale is not None else None
        self.low, self.high = devices.action_bounds()

    def network(self, raw: np.ndarray) -> np.ndarray:
        """The graph's output for raw observations (n_raw,) or (B, n_raw): (n_actions,) or (B, n_actions)."""
        z = self.encoder(np.asarray(raw, dtype=np.float64))
        return self.onnx.run_normalised(np.atleast_2d(z))[0] if z.ndim == 1 else self.onnx.run_normalised(z)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        u = self.network(raw).astype(np.float64)
        if self.rbc is None:
            return u
        if self.groups is not None:  # one correction per kind of device: spread over the slots
            u = u[..., self.groups]
        return np.clip(self.rbc(raw) + self.residual_scale * u, self.low, self.high)


# --- the loaded bundle


@dataclass
class CityLearnBundle(LoadedBundle):
    """A loaded, verified CityLearn bundle."""

    devices: DeviceTable
    encoder: ObservationEncoder | None
    limits: CityLearnSafetyLimits

    @property
    def spec_version(self) -> str:
        """The raw observation vector's version: a request's ``spec_version``."""
        return str(self.manifest["observation"]["version"])

    @property
    def action_names(self) -> list[str]:
        return list(self.manifest["action"]["names"])

    def make_policy(self, threads: int = 1) -> Any:
        """A fresh policy: raw observation -> action in [-1, 1] (before the safety wrapper)."""
        if self.controller == "onnx":
            action = self.manifest["action"]
            scale = float(action["residual_scale"]) if action.get("mode") == "rbc_residual" else None
            onnx = OnnxPolicy(self.path / ONNX_FILE, None, threads)
            groups = action.get("residual_groups") if scale is not None else None
            return CityLearnOnnxPolicy(onnx, self.encoder, self.devices, scale, groups)
        return RBCPolicy(self.devices, (self.manifest.get("params") or {}).get("soc_margin"))

    def wrap(self, policy: Any, **kwargs: Any) -> CityLearnSafetyWrapper:
        """``policy`` behind the CityLearn safety wrapper; ``kwargs`` go to it (clock, timer)."""
        return CityLearnSafetyWrapper(self.limits, self.devices, policy, **kwargs)


def load_citylearn_bundle(path: str | Path, check_onnx: bool = True) -> CityLearnBundle:
    """Load and verify a CityLearn bundle (module docstring); BundleError naming the file and the field."""
    root, manifest = read_manifest(path)
    mpath = root / MANIFEST
    if manifest.get("domain") != DOMAIN:
        raise bundle_error(mpath, f"domain {manifest.get('domain')!r}, not {DOMAIN!r}")
    if manifest.get("controller") not in CONTROLLERS:
        raise bundle_error(mpath, f"controller {manifest.get('controller')!r} is not one of {CONTROLLERS}")
    check_files(root, manifest)
    try:
        devices = DeviceTable.from_dict(manifest["devices"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bundle_error(mpath, f"devices: not a device table ({type(exc).__name__}: {exc})") from None
    obs, action = manifest.get("observation") or {}, manifest.get("action") or {}
    names = obs.get("names")
    if names != list(devices.observation_names) or obs.get("version") != raw_spec(names)["version"]:
        raise bundle_error(
            mpath, "observation: names or version do not match the device table's raw observation"
        )
    low, high = devices.action_bounds()
    if action.get("names") != list(devices.action_names):
        raise bundle_error(mpath, "action.names: differ from the device table's action slots")
    if action.get("low") != low.tolist() or action.get("high") != high.tolist():
        raise bundle_error(mpath, "action.low/high: differ from the devices' limits")
    missing = devices.missing_for_raw_state()
    if missing:
        raise bundle_error(
            mpath, f"devices: readings the RBC and the safety checks need are not observed: {missing[:3]}"
        )
    try:
        limits = CityLearnSafetyLimits.from_dict(manifest.get("safety") or {}, source=f"{mpath}: safety")
    except (ConfigError, ValueError) as exc:
        raise BundleError(str(exc)) from exc
    encoder = None
    if manifest["controller"] == "onnx":
        try:
            encoder = ObservationEncoder.from_dict(obs.get("encoding") or {}, names)
        except ValueError as exc:
            raise bundle_error(mpath, f"observation.encoding: {exc}") from None
        if action.get("mode") not in ("direct", "rbc_residual"):
            raise bundle_error(mpath, f"action.mode {action.get('mode')!r}: direct or rbc_residual")
        if action["mode"] == "rbc_residual" and not float(action.get("residual_scale") or 0) > 0:
            raise bundle_error(mpath, "action.residual_scale: must be > 0 with mode rbc_residual")
        groups = action.get("residual_groups")
        n = devices.n_actions
        if groups is not None and not (
            isinstance(groups, list) and len(groups) == n
            and all(isinstance(g, int) and not isinstance(g, bool) and 0 <= g < n for g in groups)
        ):  # fmt: skip
            raise bundle_error(mpath, f"action.residual_groups: null, or {n} group indices in [0, {n})")
    else:
        margin = (manifest.get("params") or {}).get("soc_margin", SOC_MARGIN)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 1:
            raise bundle_error(mpath, f"params.soc_margin: a number in [0, 1], got {margin!r}")
    bundle = CityLearnBundle(root, manifest, devices, encoder, limits)
    if manifest["controller"] == "onnx" and check_onnx:
        policy = bundle.make_policy()
        groups = manifest["action"].get("residual_groups")
        n_out = max(groups) + 1 if groups else devices.n_actions
        verify_onnx(root / ONNX_FILE, policy.onnx, manifest, encoder.n, n_out)
    return bundle


# --- export


def _reward(env: Any) -> dict[str, Any]:
    """The reward the env computes: our multi-objective reward's weights and scales, or the schema's class."""
    fn = env.citylearn.reward_function
    config = getattr(fn, "config", None)
    name = f"{type(fn).__module__}.{type(fn).__qualname__}"
    return {"function": name, **(asdict(config) if config is not None else {})}


def _kpis(evaluation: Mapping[str, Any] | None, evaluation_source: str | None, held_out: Path | None) -> dict:
    """The manifest's ``kpis``, ``targets`` and ``kpis_source``: given ones, else the run's held-out ones."""
    if evaluation is not None:
        return {"kpis": dict(evaluation), "targets": None, "kpis_source": evaluation_source or "--metrics"}
    if held_out is not None and (held_out / "kpis.json").is_file():
        targets = held_out / "targets.json"
        return {
            "kpis": json.loads((held_out / "kpis.json").read_text()),
            "targets": json.loads(targets.read_text()) if targets.is_file() else None,
            "kpis_source": str((held_out / "kpis.json").resolve()),
        }
    return {"kpis": None, "targets": None, "kpis_source": None}


def _base_manifest(
    controller: str,
    name: str,
    algorithm: str,
    env: Any,
    encoder: ObservationEncoder | None,
    limits: CityLearnSafetyLimits,
    action_mode: str,
    residual_scale: float | None,
    residual_groups: Sequence[int] | None = None,
) -> dict[str, Any]:
    devices = DeviceTable.from_env(env.citylearn)
    missing = devices.missing_for_raw_state()
    if missing:
        raise ValueError(
            f"{env.config.schema}: the schema leaves observations that the bundle's RBC and safety checks "
            f"read inactive: {missing[:5]}{' ...' if len(missing) > 5 else ''} (make them active)"
        )
    tracker = env.citylearn.episode_tracker
    low, high = devices.action_bounds()
    return {
        "format": FORMAT,
        "controller": controller,
        "name": name,
        "domain": DOMAIN,
        "algorithm": algorithm,
        "gridrl_version": gridrl_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "observation": {
            **raw_spec(list(devices.observation_names)),
            "schema": str(env.config.schema),
            "window": [int(tracker.simulation_start_time_step), int(tracker.simulation_end_time_step)],
            "encoding": encoder.to_dict() if encoder is not None else None,
        },
        "action": {
            "names": list(devices.action_names),
            "low": low.tolist(),
            "high": high.tolist(),
            "unit": ACTION_UNIT,
            "mode": action_mode,
            "residual_scale": residual_scale,
            "residual_groups": None if residual_groups is None else [int(g) for g in residual_groups],
        },
        "devices": devices.to_dict(),
        "reward": _reward(env),
        "safety": limits.to_dict(),
    }


def encoded_states(encoder: ObservationEncoder, n: int, seed: int) -> np.ndarray:
    """Encoded observations for the parity check: uniform over the encoder's range, every 10th row at its
    corners (each value at its low or high end)."""
    rng = np.random.default_rng(seed)
    low, high = (0.0, 1.0) if encoder.mode == "normalized" else (encoder.low, encoder.high)
    lo = np.broadcast_to(low, (encoder.n,))
    hi = np.broadcast_to(high, (encoder.n,))
    z = rng.uniform(lo, hi, (n, encoder.n))
    corners = rng.integers(0, 2, (len(z[::10]), encoder.n)).astype(bool)
    z[::10] = np.where(corners, hi, lo)
    return z.astype(np.float32)


def _scaling(config: Any) -> tuple:
    """What an env's observation scaling, device table and reward depend on (not its episodes or actions)."""
    from envs.citylearn.env import resolve_schema

    return (str(resolve_schema(config.schema)), config.start_time_step, config.end_time_step,
            config.observations, config.reward, config.reward_kwargs, config.seed)  # fmt: skip


def _limits(safety: Mapping[str, Any] | None, source: str) -> CityLearnSafetyLimits:
    return CityLearnSafetyLimits.from_dict(dict(safety or {}), source=source)


def export_citylearn_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    safety: Mapping[str, Any] | None = None,
    safety_source: str = "safety",
    evaluation: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_parity: int = 1000,
    overwrite: bool = False,
    env: Any = None,
    evaluation_source: str | None = None,
) -> dict[str, Any]:
    """Export a checkpoint of ``gridrl citylearn train`` (or ``gridrl train`` on a CityLearn config) as a
    bundle; refuses if ONNX and torch differ by more than 1e-5 on ``n_parity`` encoded observations.

    Args:
        checkpoint: The RLlib checkpoint (``gridrl_run.json`` in it or a parent says how it was trained).
        out: Bundle folder to create.
        safety: Overrides of :class:`CityLearnSafetyLimits`.
        safety_source: Named in errors about ``safety``.
        evaluation: KPIs to record (``{controller: {kpi: value}}``); default the run's held-out KPIs
            (``<trial>/heldout/kpis.json``, ``gridrl citylearn train --evaluate``) if there are any.
        seed: Seed of the parity observations.
        n_parity: Encoded observations of the parity check.
        overwrite: Replace an existing bundle at ``out``.
        env: An env simulating the run's schema, window, observations and reward, if the caller has one
            built (its episodes and action_mode may differ); else one is built from the run's env config:
            the encoding's scaling limits and the device table come from it.
        evaluation_source: Where ``evaluation`` came from (recorded).
    """
    from envs.citylearn.env import CityLearnEnvConfig, CityLearnRLlibEnv
    from envs.config import from_mapping
    from rllib_configs.policy import load_policy

    ckpt = Path(checkpoint)
    policy = load_policy(ckpt)
    info = policy.info
    if info.get("domain") != DOMAIN:
        raise ValueError(f"{ckpt}: a {info.get('domain')!r} run; this exporter takes CityLearn runs")
    source = f"{ckpt}: gridrl_run.json"
    train = from_mapping(CityLearnEnvConfig, info.get("env_config") or {}, source=source, path="env_config")
    if train.observations == "citylearn":
        raise ValueError(
            f"{source}: env_config.observations: citylearn scales inside CityLearn's wrapper; export "
            "policies trained with observations: normalized (the default) or clipped"
        )
    limits = _limits(safety, safety_source)
    if env is None:
        env = CityLearnRLlibEnv(train)
    elif _scaling(env.config) != _scaling(train):
        raise ValueError(
            f"{ckpt}: the env given does not simulate the run's schema, window, observations and reward: "
            f"{_scaling(env.config)} vs {_scaling(train)}"
        )
    residual = train.residual_scale if train.action_mode == "rbc_residual" else None
    groups = None
    if residual is not None and train.residual_per == "kind":
        groups = DeviceTable.from_env(env.citylearn).kind_groups()[1]
    n_out = int(groups.max()) + 1 if groups is not None else len(env.action_names)
    module_in = int(np.prod(policy.module.observation_space.shape))
    module_out = int(np.prod(policy.module.action_space.shape))
    if (module_in, module_out) != (env.encoder.n, n_out):
        raise ValueError(
            f"{ckpt}: the policy maps {module_in} -> {module_out} values, the run's env {env.encoder.n} "
            f"observations -> {n_out} actions (schema changed since training?)"
        )
    manifest = _base_manifest(
        "onnx", "policy", str(info.get("algorithm")), env, env.encoder, limits, train.action_mode, residual,
        groups,
    )  # fmt: skip
    out = Path(out)
    prepare_out(out, overwrite)
    manifest["onnx"] = {
        **export_onnx(policy.net, out, encoded_states(env.encoder, n_parity, seed), ckpt, seed),
        "input_encoded": True,
    }
    manifest.update(_kpis(evaluation, evaluation_source, ckpt.resolve().parent / HELD_OUT))
    manifest["params"] = None
    manifest["training"] = {
        "checkpoint": str(ckpt.resolve()),
        "seed": info.get("seed"),
        "config": info.get("config"),
        "env_config": info.get("env_config"),
        "metrics": training_metrics(ckpt),
    }
    return write_manifest(out, manifest)


def export_citylearn_rbc(
    env_config: Mapping[str, Any] | str | Path,
    out: str | Path,
    safety: Mapping[str, Any] | None = None,
    safety_source: str = "safety",
    evaluation: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    env: Any = None,
    evaluation_source: str | None = None,
) -> dict[str, Any]:
    """Write a manifest-only bundle of the rule-based controller for a CityLearn schema.

    Args:
        env_config: A schema path, or the env config (``schema`` and optionally the window and reward)
            whose device table and reward the bundle records.
        out: Bundle folder to create.
        safety: Overrides of :class:`CityLearnSafetyLimits`.
        safety_source: Named in errors about ``safety``.
        evaluation: KPIs to record (e.g. ``gridrl citylearn evaluate``'s kpis.json).
        overwrite: Replace an existing bundle at ``out``.
        env: The env, if the caller has it built.
        evaluation_source: Where ``evaluation`` came from (recorded).
    """
    from envs.citylearn.env import CityLearnRLlibEnv

    config = {"schema": str(env_config)} if isinstance(env_config, (str, Path)) else dict(env_config)
    limits = _limits(safety, safety_source)
    if env is None:
        env = CityLearnRLlibEnv({**config, "action_mode": "direct"})
    manifest = _base_manifest("rbc", "rbc", "RBC", env, None, limits, "direct", None)
    out = Path(out)
    prepare_out(out, overwrite)
    manifest.update(_kpis(evaluation, evaluation_source, None))
    manifest["params"] = {"soc_margin": SOC_MARGIN}
    manifest["training"] = None
    manifest["onnx"] = None
    return write_manifest(out, manifest)


# --- serving: the fleet app's runtime and session (serve/domains.py)


class CityLearnSession:
    """One site's two gates: the bundle's controller and the RBC, each behind the CityLearn safety wrapper.

    Both are evaluated on every request (serve/server.py picks whose action is sent by the site's mode);
    ``Served.source`` is ``pi`` when the baseline gate acted (the fleet's name for the site's incumbent
    controller: here the RBC). The wrappers' only memory is their timers (hourly decisions: no rate limit,
    no integrator), so a session needs no continuity between requests.
    """

    def __init__(self, bundle: CityLearnBundle, policy: Any = None):
        self.now = 0.0
        clock = lambda: self.now  # noqa: E731 - the timers run on the requests' time
        self.policy_gate = bundle.make_wrapper(clock=clock, policy=policy)
        baseline_limits = replace(bundle.limits, policy_deadline_s=60.0)  # a host stall: still the RBC
        self.baseline_gate = CityLearnSafetyWrapper(
            baseline_limits, bundle.devices, RBCPolicy(bundle.devices), clock=clock
        )

    def decide(self, x: np.ndarray, time_s: float, policy_routed: bool) -> Served:
        self.now = float(time_s)
        pol = self.policy_gate.decide(x)
        base = self.baseline_gate.decide(x)
        if policy_routed:
            acting, source = pol, ("policy" if pol.source == "policy" else "fallback")
        else:
            acting, source = base, ("pi" if base.source == "policy" else "fallback")
        return Served(acting.action_w, source, acting.checks_fired, pol, base, policy_routed, False)

    def figures(self, x: np.ndarray, served: Served, differ_w: float) -> dict[str, Any]:
        """Monitoring figures (serve/metrics.py): no export energy in this domain; whether the proposals
        differ (by more than 0.01 of a device's range), violations, time in fallback."""
        return {
            "export_policy_wh": 0.0,
            "export_pi_wh": 0.0,
            "measured_wh": 0.0,
            "measured_by": None,
            "differ": bool(np.max(np.abs(served.policy.action_w - served.pi.action_w), initial=0.0) > 0.01),
            "fallback_s": max(self.policy_gate.timers.fallback_until - self.now, 0.0),
            "violation": any(c in VIOLATIONS for c in served.policy.checks_fired),
            "anomaly": False,
        }


class CityLearnRuntime:
    """A CityLearn bundle in the fleet app: the ONNX session is shared by every site."""

    domain = DOMAIN
    max_power_per_phase_w = None  # actions are device shares, not per-phase watts

    def __init__(self, bundle: CityLearnBundle):
        self.citylearn = bundle
        self.path = str(bundle.path)
        self.sha256 = str(bundle.manifest["manifest_sha256"])
        self.model_version = model_version(bundle.name, self.sha256)
        self.spec_version = bundle.spec_version
        self.action_names = bundle.action_names
        self.n_raw = len(bundle.devices.observation_names)
        self._shared = bundle.make_policy() if bundle.controller == "onnx" else None

    def parse_state(self, value: Any, spec_version: str | None) -> np.ndarray:
        """The request's raw observation vector; ValueError starting with the field otherwise."""
        from serve.api import _number

        if spec_version != self.spec_version:
            raise ValueError(
                f"spec_version: {spec_version!r} is not this site's CityLearn observation "
                f"{self.spec_version!r} (the bundle's observation.version; the vector's order means "
                "nothing without it)"
            )
        if not isinstance(value, list):
            raise ValueError(
                f"state: a CityLearn site takes the raw central observation as a list of {self.n_raw} "
                f"numbers (the bundle's observation.names order), got {type(value).__name__}"
            )
        if len(value) != self.n_raw:
            raise ValueError(f"state: expected {self.n_raw} values ({self.spec_version}), got {len(value)}")
        names = self.citylearn.manifest["observation"]["names"]
        return np.array([_number(v, f"state[{i}] {names[i]}") for i, v in enumerate(value)])

    def new_session(self) -> CityLearnSession:
        return CityLearnSession(self.citylearn, policy=self._shared)


def load_citylearn_runtime(path: str) -> CityLearnRuntime:
    return CityLearnRuntime(load_citylearn_bundle(path))


register_domain(DOMAIN, load_citylearn_runtime)
register_exporter(DOMAIN, export_citylearn_checkpoint)
