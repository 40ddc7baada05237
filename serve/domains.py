"""Bundles by domain: how ``gridrl export`` writes a checkpoint's bundle, and how the fleet app
(serve/server.py) loads a site's bundle and makes its session.

A training run's ``gridrl_run.json`` names its ``domain``, and so does a bundle's ``manifest.json``.
:func:`export_checkpoint_bundle` reads the run's and calls the exporter registered for it; the fleet app
reads the manifest's and dispatches to the loader registered for it (:func:`load_runtime`), so every
domain's bundles are served by one deployment, each site with its own bundle, session and mode. The export
domain is registered below; CityLearn in serve/citylearn_bundle.py (its safety wrapper:
serve/citylearn_safety.py). **To add a domain**, write a loader (and an exporter) and call
:func:`register_domain` (and :func:`register_exporter`) at import of the module that defines them, and add
that module to :data:`DOMAIN_MODULES` (imported on first use, so a runtime without the domain's
dependencies still serves the others)::

    def load_citylearn_runtime(path: str) -> Runtime: ...   # verify the bundle, build what sites share
    register_domain("citylearn", load_citylearn_runtime)
    register_exporter("citylearn", export_citylearn_checkpoint)  # (checkpoint, out, **options) -> manifest

Exporters take ``(checkpoint, out, safety=None, safety_source=..., evaluation=None, seed=0, n_parity=1000,
overwrite=False)`` and return the manifest written; each checks ONNX against torch (serve/bundle.py
``export_onnx``). Every bundle shares the format, the hashes and their checks (serve/bundle.py
``read_manifest``, ``check_files``, ``write_manifest``).

The interface, kept small:

* ``loader(path) -> Runtime``: verifies the bundle (raise :class:`serve.bundle.BundleError` naming the
  file and the problem: the admin API returns it and the old bundle keeps serving) and builds what every
  site using it shares, read-only (an ONNX session). It runs in a worker thread, never on the request
  loop, and is cached per ``manifest_sha256`` (serve/fleet.py ``BundleCache``, LRU-bounded).
* :class:`Runtime`: ``domain``, ``path``, ``sha256`` (the manifest's), ``model_version``,
  ``max_power_per_phase_w`` (or None where actions are not per-phase watts),
  ``parse_state(value, spec_version) -> np.ndarray`` (the request's ``state``, validated; ValueError
  naming the feature otherwise: the app answers 422), and ``new_session() -> Session``.
* :class:`Session`: one site's controllers behind the safety wrapper, with memory between requests:
  ``decide(x, time_s, policy_routed) -> serve.session.Served``. The policy and the baseline are both
  evaluated every time (the mode decides whose action is sent; the log keeps both).

The decision log writes the export domain's raw-log streams only for ``domain == "export"`` records;
other domains get the decisions table.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serve.bundle import MANIFEST, BundleError


class Session(Protocol):
    """One site's controllers (serve/session.py ``SiteSession`` for the export domain)."""

    def decide(self, x: np.ndarray, time_s: float, policy_routed: bool) -> Any: ...


class Runtime(Protocol):
    """A loaded, verified bundle, shared by the sites that use it."""

    domain: str
    path: str
    sha256: str
    model_version: str

    def parse_state(self, value: Any, spec_version: str | None) -> np.ndarray: ...

    def new_session(self) -> Session: ...


Loader = Callable[[str], Runtime]
Exporter = Callable[..., dict[str, Any]]
_LOADERS: dict[str, Loader] = {}
_EXPORTERS: dict[str, Exporter] = {}
DOMAIN_MODULES: dict[str, str] = {"export": "serve.domains", "citylearn": "serve.citylearn_bundle"}
"""Domain -> the module that registers its loader and exporter (imported on first use)."""


def register_domain(domain: str, loader: Loader) -> None:
    """Make bundles whose manifest says ``domain`` loadable by the fleet app."""
    _LOADERS[domain] = loader


def register_exporter(domain: str, exporter: Exporter) -> None:
    """Make checkpoints of runs whose ``gridrl_run.json`` says ``domain`` exportable by ``gridrl export``."""
    _EXPORTERS[domain] = exporter


def _import_domain(domain: str) -> None:
    if domain in DOMAIN_MODULES and (domain not in _LOADERS or domain not in _EXPORTERS):
        importlib.import_module(DOMAIN_MODULES[domain])


def export_checkpoint_bundle(checkpoint: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Write the bundle of a training run's checkpoint with its domain's exporter; returns the manifest.

    Raises:
        FileNotFoundError: No ``gridrl_run.json`` in the checkpoint or a parent.
        ValueError: A domain no exporter is registered for (the message names the known ones).
    """
    from rllib_configs.policy import find_run_info

    domain = find_run_info(checkpoint).get("domain")
    _import_domain(str(domain))
    if domain not in _EXPORTERS:
        known = sorted(set(_EXPORTERS) | set(DOMAIN_MODULES))
        raise ValueError(f"{checkpoint}: a run of domain {domain!r}; bundles are made for {', '.join(known)}")
    return _EXPORTERS[domain](checkpoint, out, **options)


def domain_of(path: str | Path) -> str:
    """The ``domain`` field of a bundle's manifest (not verified here: the loader does that)."""
    mpath = Path(path) / MANIFEST if not str(path).endswith(MANIFEST) else Path(path)
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{mpath}: not found (a bundle is a directory with manifest.json)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath}: not readable JSON ({exc})") from None
    domain = manifest.get("domain", "export") if isinstance(manifest, dict) else None
    if not isinstance(domain, str):
        raise BundleError(f"{mpath}: 'domain' must be a string, got {domain!r}")
    return domain


def load_runtime(path: str | Path) -> Runtime:
    """Load and verify the bundle at ``path`` with its domain's loader."""
    domain = domain_of(path)
    if domain not in _LOADERS:
        _import_domain(domain)
    if domain not in _LOADERS:
        known = sorted(set(_LOADERS) | set(DOMAIN_MODULES))
        raise BundleError(f"{path}: domain {domain!r} is not served here (known: {', '.join(known)})")
    return _LOADERS[domain](str(path))


# --- the export domain


def model_version(name: str, sha256: str) -> str:
    return f"{name}:{sha256[:12]}"


class ExportRuntime:
    """An export-domain bundle: the ONNX session is shared by every site (it has no state); baseline
    controllers (PI, RBC) have state, so each site gets its own."""

    domain = "export"

    def __init__(self, bundle: Any):
        self.bundle = bundle
        self.path = str(bundle.path)
        self.sha256 = str(bundle.manifest["manifest_sha256"])
        self.model_version = model_version(bundle.name, self.sha256)
        self.max_power_per_phase_w = bundle.max_power_per_phase_w
        self._shared = bundle.make_policy() if bundle.controller == "onnx" else None

    def parse_state(self, value: Any, spec_version: str | None) -> np.ndarray:
        from serve.api import check_spec_version, parse_state

        try:
            x, by_name = parse_state(value)
        except ValueError as exc:
            raise ValueError(f"state: {exc}") from None
        check_spec_version(spec_version, by_name)
        return x

    def new_session(self) -> Session:
        from serve.session import SiteSession

        return SiteSession(self.bundle, policy=self._shared)


def load_export(path: str) -> ExportRuntime:
    from serve.bundle import load_bundle

    return ExportRuntime(load_bundle(path))


def export_export_checkpoint(checkpoint: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    from serve.bundle import export_checkpoint

    return export_checkpoint(checkpoint, out, **options)


register_domain("export", load_export)
register_exporter("export", export_export_checkpoint)
