"""The bundle, the one thing that crosses from training to a site: writing it, and loading it without torch.

A bundle is a directory::

    BUNDLE/manifest.json   what the controller is, and everything needed to run and check it
    BUNDLE/policy.onnx     trained policies only: the deterministic policy, normalised state -> [-1, 1]

``manifest.json`` (``format: gridrl-bundle-1``):

* ``controller``: ``onnx`` (a trained policy), ``pi`` or ``rbc`` (baselines: parameters, no model
  file; envs/controllers.py holds their code, so any controller deploys the same way);
* ``name`` (the key in metrics.json: ``policy``, ``pi``, ``rbc``), ``domain``, ``algorithm``;
* ``state_spec``: envs/state_spec.py's :func:`spec_dict` (names, units, order, version, sha256);
* ``normalization``: the statistics the policy was trained with (envs/normalization.py format). For
  ``onnx`` they are applied **in numpy before the graph** (``onnx.input`` says so); the anomaly
  detector reads them for every controller;
* ``action``: names, unit, bounds in W and the networks' [-1, 1] (scaled by envs/actions.py);
* ``safety``: :class:`serve.safety.SafetyLimits`;
* ``site``: the training site's name and control settings (the action bound comes from it);
* ``training``: checkpoint, seed, env config and the last training metrics (plus evaluation metrics
  when given); ``onnx``: file, input/output names, opset, the ONNX-vs-torch parity measured at export
  and a few known answers that loading re-checks;
* ``gridrl_version``, ``created_at`` (UTC, ISO 8601);
* ``files``: sha256 and size of every other file; ``manifest_sha256``: sha256 of the manifest itself
  (canonical JSON without this key), so an edited manifest is refused too.

:func:`load_bundle` checks the format, both kinds of hashes, the state spec against the running
code's, the ONNX graph's shapes and its known answers, and raises :class:`BundleError` naming the
file and the mismatch. Export (:func:`export_checkpoint`) needs torch and Ray; loading needs numpy and
onnxruntime (imported only for ``onnx`` bundles).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from envs.actions import ACTION_NAMES, N_ACTIONS, to_unit
from envs.config import ConfigError, from_mapping, to_mapping
from envs.controllers import PIConfig, PIController, RBCConfig, RuleBasedController
from envs.normalization import ObsNormalizer
from envs.outputs import sha256_file
from envs.site import Site, load_site
from envs.state_spec import N_FEATURES, spec_dict
from serve.safety import SafetyLimits, SafetyWrapper

FORMAT = "gridrl-bundle-1"
MANIFEST = "manifest.json"
ONNX_FILE = "policy.onnx"
CONTROLLERS = ("onnx", "pi", "rbc")
PARITY_TOL = 1e-5
OPSET = 17


class BundleError(ValueError):
    """A bundle is missing, tampered with, or does not match this runtime; the message names the file."""


# --- policies a bundle loads as (serve.safety.UnitPolicy: raw state (30,) -> [-1, 1] (3,))


class OnnxPolicy:
    """The ONNX graph on one core: numpy normalisation (if the policy was trained with it), then the graph."""

    def __init__(self, path: Path, normalizer: ObsNormalizer | None, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise BundleError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        self.normalizer = normalizer
        self.input = self.session.get_inputs()[0].name

    def run_normalised(self, z: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.asarray(z, np.float32)})[0]

    def act_unit(self, obs: np.ndarray) -> np.ndarray:
        """Actions in [-1, 1] (B, A) for raw state vectors (B, F) or one (F,): rllib_configs/policy.py
        ``Policy.act_unit`` for the exported graph (envs/controllers.py ``UnitPolicy``)."""
        x = np.atleast_2d(obs)
        if self.normalizer is not None:
            x = self.normalizer(x)
        return np.clip(self.run_normalised(x), -1.0, 1.0)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        x = self.normalizer(state[None, :]) if self.normalizer is not None else state[None, :]
        return self.run_normalised(x)[0]


class ControllerPolicy:
    """A baseline controller (targets in W) as a policy in [-1, 1]."""

    def __init__(self, controller: Any, max_power_per_phase_w: float):
        self.controller = controller
        self.max_w = max_power_per_phase_w

    def reset(self) -> None:
        self.controller.reset(1)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        return to_unit(self.controller.act(state[None, :])[0], self.max_w)


@dataclass
class LoadedBundle:
    """What every domain's loaded, verified bundle has: its directory and manifest, its name and controller,
    and a policy behind the domain's safety wrapper (serve/citylearn_bundle.py's is the other domain)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def controller(self) -> str:
        return str(self.manifest["controller"])

    def make_policy(self, threads: int = 1) -> Any:
        """A fresh policy of the bundle's controller (before the safety wrapper)."""
        raise NotImplementedError

    def wrap(self, policy: Any, **kwargs: Any) -> Any:
        """``policy`` behind the domain's safety wrapper; ``kwargs`` go to the wrapper (clock, timer)."""
        raise NotImplementedError

    def make_wrapper(self, **kwargs: Any) -> Any:
        """The policy behind the safety wrapper; ``kwargs`` go to the wrapper (clock, timer).

        ``threads``: ONNX threads of a new policy. ``policy``: a policy made by :meth:`make_policy` to use
        instead of a new one (an ONNX session has no state between calls, so sites can share one; a baseline
        controller has state)."""
        threads = kwargs.pop("threads", 1)
        policy = kwargs.pop("policy", None) or self.make_policy(threads)
        return self.wrap(policy, **kwargs)


@dataclass
class Bundle(LoadedBundle):
    """A loaded, verified export-domain bundle."""

    normalizer: ObsNormalizer
    limits: SafetyLimits

    @property
    def max_power_per_phase_w(self) -> float:
        return float(self.manifest["action"]["high_w"])

    def make_policy(self, threads: int = 1) -> Any:
        """A fresh policy (a :class:`serve.safety.UnitPolicy`) from this bundle."""
        if self.controller == "onnx":
            normalised = bool(self.manifest["onnx"].get("input_normalised", True))
            return OnnxPolicy(self.path / ONNX_FILE, self.normalizer if normalised else None, threads)
        source = f"{self.path / MANIFEST}: params"
        params = self.manifest.get("params") or {}
        if self.controller == "pi":
            return ControllerPolicy(
                PIController(from_mapping(PIConfig, params, source)), self.max_power_per_phase_w
            )
        return ControllerPolicy(
            RuleBasedController(from_mapping(RBCConfig, params, source)), self.max_power_per_phase_w
        )

    def wrap(self, policy: Any, **kwargs: Any) -> SafetyWrapper:
        """``policy`` behind :class:`SafetyWrapper`; ``kwargs`` go to it (clock, timer)."""
        return SafetyWrapper(self.limits, self.normalizer, policy, **kwargs)

    def check_site(self, site: Site, source: str = "site") -> None:
        """Refuse a site whose action bound differs from the one the policy was trained with."""
        site_w = site.control.max_power_per_phase_w
        if abs(site_w - self.max_power_per_phase_w) > 1e-9:
            raise BundleError(
                f"{source}: control.max_power_per_phase_w = {site_w} W, but bundle {self.path} was made for "
                f"{self.max_power_per_phase_w} W (the policy's [-1, 1] maps onto that range)"
            )


# --- hashes and the manifest


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def gridrl_version() -> str:
    try:
        from importlib.metadata import version

        return version("gridrl")
    except Exception:  # noqa: BLE001 - not installed: running from a source tree
        return "unknown"


def write_manifest(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in ``out`` (but the manifest) into ``manifest``, seal it and write it."""
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        **manifest,
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n")
    return manifest


def base_manifest(
    controller: str,
    name: str,
    algorithm: str,
    site: Site,
    site_path: str | None,
    normalizer: ObsNormalizer,
    limits: SafetyLimits,
) -> dict[str, Any]:
    """The manifest fields every bundle has (files and hashes are added by :func:`write_manifest`)."""
    max_w = site.control.max_power_per_phase_w
    return {
        "format": FORMAT,
        "controller": controller,
        "name": name,
        "domain": "export",
        "algorithm": algorithm,
        "gridrl_version": gridrl_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "state_spec": spec_dict(),
        "normalization": normalizer.to_dict(),
        "action": {
            "names": list(ACTION_NAMES),
            "unit": "W",
            "low_w": 0.0,
            "high_w": max_w,
            "network_low": -1.0,
            "network_high": 1.0,
            "scaling": "envs.actions.to_watts",
        },
        "safety": limits.to_dict(),
        "site": {"name": site.name, "path": site_path, "control": to_mapping(site.control)},
    }


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (pass --force to replace it)")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"{out}: not a bundle directory; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _limits(safety: dict[str, Any] | None, site: Site, source: str) -> SafetyLimits:
    """The default limits, with ``safety``'s overrides; the action bound always comes from the site."""
    site_w = site.control.max_power_per_phase_w
    if safety and safety.get("max_power_per_phase_w", site_w) != site_w:
        raise ConfigError(
            source, "max_power_per_phase_w", f"is the site's control.max_power_per_phase_w ({site_w})"
        )
    return SafetyLimits.from_dict({**(safety or {}), "max_power_per_phase_w": site_w}, source=source)


def export_baseline(
    kind: str,
    out: str | Path,
    site_path: str | None = None,
    safety: dict[str, Any] | None = None,
    safety_source: str = "safety",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a manifest-only bundle for the PI (``kind='pi'``) or the rule-based controller (``'rbc'``)."""
    if kind not in ("pi", "rbc"):
        raise ValueError(f"unknown baseline {kind!r}: pi or rbc")
    site = load_site(site_path)
    limits = _limits(safety, site, safety_source)
    out = Path(out)
    prepare_out(out, overwrite)
    params = to_mapping(PIConfig() if kind == "pi" else RBCConfig())
    manifest = base_manifest(kind, kind, kind.upper(), site, site_path, ObsNormalizer.load(), limits)
    manifest.update(params=params, training=None, onnx=None)
    return write_manifest(out, manifest)


# --- loading


def bundle_error(path: Path, problem: str) -> BundleError:
    """The error of a bundle file: its path, then the problem (every domain's loader words it so)."""
    return BundleError(f"{path}: {problem}")


def _check_spec(path: Path, spec: dict[str, Any]) -> None:
    mine = spec_dict()
    if spec.get("sha256") == mine["sha256"] and spec.get("version") == mine["version"]:
        return
    theirs = [f.get("name") for f in spec.get("features", [])]
    ours = [f["name"] for f in mine["features"]]
    diff = [f"#{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b][:5]
    raise bundle_error(
        path,
        f"state spec mismatch: bundle has {spec.get('version')!r} (sha256 {str(spec.get('sha256'))[:12]}), "
        f"this runtime has {mine['version']!r} (sha256 {mine['sha256'][:12]}); {len(theirs)} vs {len(ours)} "
        f"features{'; differing: ' + ', '.join(diff) if diff else ''}. Re-export it with this gridrl.",
    )


def check_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is there with its sha256 and size (an ``onnx`` controller's list has
    policy.onnx); :class:`BundleError` naming the file otherwise."""
    mpath = root / MANIFEST
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bundle_error(mpath, "no 'files' table of hashes")
    if manifest.get("controller") == "onnx" and ONNX_FILE not in files:
        raise bundle_error(mpath, f"controller 'onnx' but {ONNX_FILE} is not listed in 'files'")
    for name, entry in files.items():
        p = root / name
        if Path(name).name != name or not p.is_file():
            raise bundle_error(p, "listed in the manifest but missing")
        size, digest = p.stat().st_size, sha256_file(p)
        if size != entry.get("bytes") or digest != entry.get("sha256"):
            raise bundle_error(
                p,
                f"sha256 mismatch: manifest says {str(entry.get('sha256'))[:16]}... "
                f"({entry.get('bytes')} bytes), file is {digest[:16]}... ({size} bytes): "
                "the file was changed or truncated",
            )


def verify_onnx(
    path: Path, policy: OnnxPolicy, manifest: dict[str, Any], n_in: int = N_FEATURES, n_out: int = N_ACTIONS
) -> None:
    """The graph maps (B, n_in) -> (B, n_out) and reproduces the manifest's known answers (any domain)."""
    ins, outs = policy.session.get_inputs(), policy.session.get_outputs()
    out_dim = outs[0].shape[-1] if len(outs) == 1 and outs[0].shape else None
    ok_out = out_dim == n_out or isinstance(out_dim, str)  # a symbolic width: the known answers check it
    if len(ins) != 1 or not ins[0].shape or ins[0].shape[-1] != n_in or not ok_out:
        raise bundle_error(
            path,
            f"graph must map (B, {n_in}) -> (B, {n_out}); got "
            f"{[i.shape for i in ins]} -> {[o.shape for o in outs]}",
        )
    known = (manifest.get("onnx") or {}).get("known_answers") or {}
    z, want = np.asarray(known.get("inputs", []), np.float32), np.asarray(known.get("outputs", []))
    if z.size == 0:
        raise bundle_error(path.parent / MANIFEST, "onnx.known_answers missing")
    if want.ndim != 2 or want.shape[-1] != n_out:  # a symbolic graph width is checked here
        raise bundle_error(
            path,
            f"graph must map (B, {n_in}) -> (B, {n_out}); its known answers have shape {list(want.shape)}",
        )
    got = policy.run_normalised(z)
    if got.shape != want.shape or not np.all(np.abs(got - want) <= PARITY_TOL):
        raise bundle_error(
            path,
            f"known answers differ from the manifest's (max abs diff "
            f"{np.max(np.abs(got - want)) if got.shape == want.shape else 'shape'}): wrong graph or runtime",
        )


def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(bundle folder, manifest)`` of the bundle at ``path`` (its folder or its manifest.json), with the
    checks every domain shares on the manifest itself: readable JSON, the format, its own sha256.
    :func:`check_files` checks the files it lists. :class:`BundleError` naming the file otherwise."""
    root = Path(path)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise bundle_error(mpath, "not found (a bundle is a directory with manifest.json)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bundle_error(mpath, f"not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bundle_error(
            mpath,
            f"format is {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
            f"this runtime reads {FORMAT!r}",
        )
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise bundle_error(mpath, "manifest_sha256 mismatch: the manifest was edited after export")
    return root, manifest


def load_bundle(path: str | Path, check_onnx: bool = True) -> Bundle:
    """Load and verify an export-domain bundle directory (or its manifest.json); :class:`BundleError` on
    any mismatch. Other domains' bundles load through serve/domains.py ``load_runtime``."""
    root, manifest = read_manifest(path)
    mpath = root / MANIFEST
    if manifest.get("domain", "export") != "export":
        raise bundle_error(
            mpath,
            f"a {manifest.get('domain')!r} bundle, not an export-domain one (serve/domains.py load_runtime "
            "loads any domain's bundles)",
        )
    if manifest.get("controller") not in CONTROLLERS:
        raise bundle_error(mpath, f"controller {manifest.get('controller')!r} is not one of {CONTROLLERS}")
    _check_spec(mpath, manifest.get("state_spec") or {})
    check_files(root, manifest)
    try:
        normalizer = ObsNormalizer.from_dict(
            manifest.get("normalization") or {}, source=f"{mpath}: normalization"
        )
        limits = SafetyLimits.from_dict(manifest.get("safety") or {}, source=f"{mpath}: safety")
    except (ConfigError, ValueError) as exc:
        raise BundleError(str(exc)) from exc
    if abs(limits.max_power_per_phase_w - float(manifest["action"]["high_w"])) > 1e-9:
        raise bundle_error(mpath, "safety.max_power_per_phase_w differs from action.high_w")
    bundle = Bundle(root, manifest, normalizer, limits)
    if manifest["controller"] == "onnx":
        if check_onnx:
            verify_onnx(root / ONNX_FILE, bundle.make_policy(), manifest)
    else:
        try:
            bundle.make_policy()
        except ConfigError as exc:
            raise BundleError(str(exc)) from exc
    return bundle


# --- export of a trained checkpoint (needs torch and Ray; imported here only)


def parity_states(n: int, seed: int) -> np.ndarray:
    """Normalised states for the parity check: standard normal draws, every 10th pushed to the +-10 clip."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, N_FEATURES))
    z[::10] *= 10.0
    return np.clip(z, -10.0, 10.0).astype(np.float32)


def training_metrics(checkpoint: Path) -> dict[str, Any]:
    """The last training result reported at or before ``checkpoint`` was written (RLlib metric names)."""
    from rllib_configs.runner import summary_metrics

    results = checkpoint.parent / "result.json"
    if not results.is_file():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    written = checkpoint.stat().st_mtime + 1.0
    before = [r for r in rows if r.get("timestamp", 0) <= written] or rows
    return summary_metrics(before[-1]) if before else {}


def export_onnx(net: Any, out: Path, z: np.ndarray, source: Path, seed: int) -> dict[str, Any]:
    """Write ``net`` (:func:`rllib_configs.policy.deterministic_module`: (B, F) -> (B, A)) as
    ``out/policy.onnx`` and check it: ONNX and torch agree within :data:`PARITY_TOL` on the inputs ``z``
    (B, F), else ``out`` is deleted and RuntimeError names ``source``. Returns the manifest's ``onnx``
    section (file, names, opset, how the action is made deterministic, parity, known answers). Any
    domain's exporter calls it (serve/citylearn_bundle.py too)."""
    import torch

    onnx_path = out / ONNX_FILE
    torch.onnx.export(
        net,
        (torch.zeros(1, z.shape[1]),),
        str(onnx_path),
        input_names=["obs"],
        output_names=["action"],
        dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    with torch.no_grad():
        want = net(torch.as_tensor(z)).numpy().astype(np.float64)
    got = OnnxPolicy(onnx_path, None).run_normalised(z)
    diff = float(np.max(np.abs(got - want)))
    if not diff <= PARITY_TOL:
        shutil.rmtree(out)
        raise RuntimeError(
            f"{source}: ONNX and torch actions differ by {diff:.3g} > {PARITY_TOL} on {len(z)} states"
        )
    return {
        "file": ONNX_FILE,
        "input": "obs",
        "output": "action",
        "opset": OPSET,
        "deterministic": {"TorchDiagGaussian": "mean", "TorchSquashedGaussian": "tanh(mean)"}.get(
            net.kind, "identity"
        ),
        "parity": {"states": len(z), "seed": seed, "max_abs_diff": diff, "tolerance": PARITY_TOL},
        "known_answers": {"inputs": z[:8].tolist(), "outputs": got[:8].tolist()},
    }


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    safety: dict[str, Any] | None = None,
    safety_source: str = "safety",
    evaluation: dict[str, Any] | None = None,
    seed: int = 0,
    n_parity: int = 1000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export an RLlib checkpoint of the export domain to a bundle; refuses if ONNX/torch parity fails.
    (serve/domains.py ``export_checkpoint`` picks the exporter of a checkpoint's domain.)"""
    from rllib_configs.policy import load_policy

    ckpt = Path(checkpoint)
    policy = load_policy(ckpt)
    info = policy.info
    if info.get("domain") != "export":
        raise ValueError(f"{ckpt}: a {info.get('domain')!r} run; this exporter takes export-domain runs")
    env_config = info.get("env_config") or {}
    site_path = env_config.get("site")
    site = load_site(site_path)
    policy.for_site(site)
    limits = _limits(safety, site, safety_source)
    out = Path(out)
    prepare_out(out, overwrite)
    normalizer = policy.normalizer or ObsNormalizer.load()
    onnx = export_onnx(policy.net, out, parity_states(n_parity, seed), ckpt, seed)
    manifest = base_manifest(
        "onnx", "policy", str(info.get("algorithm")), site, site_path, normalizer, limits
    )
    manifest["params"] = None
    manifest["onnx"] = {**onnx, "input_normalised": policy.normalizer is not None}
    manifest["training"] = {
        "checkpoint": str(ckpt.resolve()),
        "seed": info.get("seed"),
        "config": info.get("config"),
        "env_config": env_config,
        "metrics": training_metrics(ckpt),
        "evaluation": evaluation,
    }
    return write_manifest(out, manifest)
