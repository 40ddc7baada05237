"""The policy server's logic, without Ray or HTTP: one :class:`PolicyService` per Serve replica.

One deployment serves a fleet: each request names its site, and each site has its bundle, its session
(the safety wrappers' memory: PI integrator, fallback timers, rate limit) and its mode (serve/fleet.py).

Per request (:meth:`PolicyService.act`): re-read the shared control state when it is due
(serve/control.py), resolve the site's bundle and mode, route by mode (serve/modes.py), evaluate both
controllers of the site's session (serve/session.py), write the decision to the write-ahead log
(serve/decision_log.py), count it (serve/metrics.py, serve/status.py), feed the rollback monitor of the
site's bundle (serve/rollback.py) and, when a trigger fires, roll back to the PI the sites that bundle
serves (the whole deployment when it is the default bundle). The response is built only after the log
write returned. A site whose bundle is not loaded in this replica is loaded first
(:meth:`PolicyService.pending`, :meth:`PolicyService.load`: the app does it in a worker thread).

Admin operations (mode and percentage, bundle swap, for the deployment's default or for one site; manual
rollback, flush) change the control state; a bundle swap is verified first (the domain's loader:
hashes, state spec, ONNX known answers; plus the same action bound as the bundle it replaces) and
refused with the reason otherwise, the old bundle serving on. Other replicas load a new bundle in the
background when they see it in the control state and switch once it is loaded; one that does not load
there is reported by ``/healthz`` and its sites are served by the deployed bundle meanwhile.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from envs.config import to_mapping
from envs.site import DEFAULT_SITE_PATH
from envs.state_spec import FEAT, SPEC_VERSION
from serve.api import ActRequest, StateError
from serve.bundle import Bundle, BundleError
from serve.config import MODES, ServeConfig, admin_token_digest
from serve.control import ControlStore
from serve.decision_log import DecisionLog
from serve.domains import Runtime, load_runtime
from serve.fleet import BundleCache, Sessions, SiteView, site_view
from serve.metrics import ServerMetrics
from serve.modes import policy_acts
from serve.rollback import RollbackMonitor
from serve.safety import VIOLATIONS
from serve.status import SiteHistory, merged

_ACKED = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
_TARGET = [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]
RETRY_CACHE = 10_000
ROLLBACK_CHECK_S = 0.5
_NO_FIGURES = {
    "export_policy_wh": 0.0, "export_pi_wh": 0.0, "measured_wh": 0.0, "measured_by": None, "differ": False,
    "fallback_s": 0.0, "violation": False, "anomaly": False,
}  # fmt: skip


class AdminError(ValueError):
    """An admin request that cannot be carried out (HTTP 404 or 409); the message says why."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def site_yaml_of(bundle: Bundle) -> Path | None:
    """The bundle's site file, for the raw logs' ``site.yaml`` (None if it is not readable here)."""
    path = (bundle.manifest.get("site") or {}).get("path")
    p = Path(path) if path else DEFAULT_SITE_PATH
    return p if p.is_file() else None


def _r(v: np.ndarray) -> list[float]:
    return [round(float(a), 3) for a in v]


def resolve_sites(sites: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The config's ``sites`` as control-state entries: each bundle's manifest sha256 read (verified when
    loaded); a bundle that cannot be read raises BundleError naming it."""
    import json

    out, shas = {}, {}
    for site_id, s in (sites or {}).items():
        entry = {k: v for k, v in s.items() if v is not None}
        if entry.get("bundle"):
            path = str(entry["bundle"])
            if path not in shas:
                mpath = Path(path) / "manifest.json"
                try:
                    shas[path] = json.loads(mpath.read_text())["manifest_sha256"]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise BundleError(f"{mpath}: site {site_id}: not a readable bundle ({exc})") from None
            entry["bundle_sha256"] = shas[path]
        out[site_id] = entry
    return out


class PolicyService:
    """Everything one replica does (module docstring).

    Args:
        config: The server's settings.
        replica: This replica's id (Serve's replica id; any unique string outside Serve).
    """

    def __init__(self, config: ServeConfig, replica: str):
        self.config = config
        self.replica = replica
        self.log_dir = config.resolved_log_dir()
        self.token_sha256 = admin_token_digest(config)
        deployed_rt = load_runtime(config.bundle)
        self.store = ControlStore(self.log_dir)
        deployed = {"bundle": str(config.bundle), "mode": config.mode, "rollout_pct": config.rollout_pct}
        sites = {k: {f: v for f, v in to_mapping(s).items() if v is not None} for k, s in
                 sorted((config.sites or {}).items())}  # fmt: skip
        if sites:
            deployed["sites"] = sites
        state = self.store.init(deployed, deployed_rt.sha256, resolve_sites(sites))
        self.sessions = Sessions(config.max_sites)
        self.cache = BundleCache(config.max_bundles, deployed_rt, on_evict=self.sessions.drop_bundle)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bundle-load")
        self.metrics = ServerMetrics(replica, config.metrics_max_sites)
        self.history = SiteHistory(replica, self.log_dir)
        self.monitors: dict[str, RollbackMonitor] = {}
        bundle = getattr(deployed_rt, "bundle", None)
        self.log = DecisionLog(self.log_dir, replica, config.log, site_yaml_of(bundle) if bundle else None)
        self._retries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._acked_seen: dict[str, tuple[str, np.ndarray]] = {}
        self.control: dict[str, Any] = {}
        self._version = -1
        self._next_poll = 0.0
        self._next_check: dict[str, float] = {}
        self._apply(state)

    # --- control state

    @property
    def default_runtime(self) -> Runtime:
        """The deployment's default bundle (the deployed one while a swapped-in one loads or fails here)."""
        return self.cache.get(self.control["bundle_sha256"]) or self.cache.pinned

    @property
    def model_version(self) -> str:
        return self.default_runtime.model_version

    @property
    def bundle_error(self) -> str | None:
        wanted = {self.control.get("bundle_sha256")} | {
            s.get("bundle_sha256") for s in (self.control.get("sites") or {}).values()
        }
        errs = [e for sha, e in self.cache.errors.items() if sha in wanted]
        return f"serving the deployed bundle instead: {'; '.join(errs)}" if errs else None

    def _preload(self, path: str, sha: str) -> None:
        if self.cache.get(sha) is None and not self.cache.loading(sha) and sha not in self.cache.errors:
            self._pool.submit(self._load_quietly, path, sha)

    def _load_quietly(self, path: str, sha: str) -> None:
        try:
            self.cache.load(path, sha)
        except BundleError:
            pass  # recorded in cache.errors, reported by /healthz

    def _apply(self, state: dict[str, Any]) -> None:
        old = self.control
        if old and state.get("bundle_sha256") != old.get("bundle_sha256"):
            self._preload(state["bundle"], state["bundle_sha256"])
        old_sites = (old or {}).get("sites") or {}
        for site, s in (state.get("sites") or {}).items():
            sha = s.get("bundle_sha256")
            if sha and sha != (old_sites.get(site) or {}).get("bundle_sha256") and self.sessions.peek(site):
                self._preload(s["bundle"], sha)  # a site served here: load before it switches
        if old and old.get("rolled_back") and not state.get("rolled_back"):
            for m in self.monitors.values():
                m.reset_policy()  # re-armed by an operator: old violations no longer count
        self.control = state
        self._version = state.get("version", 0)
        self.metrics.control(
            state["mode"], float(state["rollout_pct"]), bool(state.get("rolled_back")), self.model_version
        )

    def sync(self, force: bool = False) -> None:
        """Re-read the control state if it is due (or ``force``)."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return
        self._next_poll = now + self.config.control_poll_s
        state = self.store.read()
        if state.get("version") != self._version:
            self._apply(state)

    # --- the site's bundle

    def _runtime(self, site_id: str, view: SiteView) -> Runtime | None:
        """The bundle to serve ``site_id`` with now, or None if it must be loaded first."""
        rt = self.cache.get(view.bundle_sha256)
        if rt is not None:
            return rt
        if view.bundle_sha256 in self.cache.errors:
            return self.cache.pinned
        current = self.sessions.peek_sha(site_id)
        if current is not None and self.cache.loading(view.bundle_sha256):
            rt = self.cache.get(current)  # hot swap: the old bundle serves until the new one is loaded
            if rt is not None:
                return rt
        return None

    def pending(self, site_id: str) -> tuple[str, str] | None:
        """``(path, sha256)`` of the bundle to load before :meth:`act` serves ``site_id``; None if ready."""
        self.sync()
        view = site_view(self.control, site_id)
        return None if self._runtime(site_id, view) is not None else (view.bundle, view.bundle_sha256)

    def load(self, path: str, sha: str) -> None:
        """Load a site's bundle (blocking: a worker thread); a failure is recorded, the deployed serves."""
        self._load_quietly(path, sha)

    # --- decisions

    def act(self, req: ActRequest, x: np.ndarray | None = None) -> dict[str, Any]:
        """Decide for one validated request; StateError if its state does not fit the site's domain."""
        self.sync()
        site = req.site_id
        view = site_view(self.control, site)
        rt = self._runtime(site, view)
        if rt is None:
            self.load(view.bundle, view.bundle_sha256)
            rt = self._runtime(site, view) or self.cache.pinned
        if x is None:
            try:
                x = rt.parse_state(req.state, req.spec_version)
            except ValueError as exc:
                raise StateError(str(exc)) from None
        if req.request_id is not None and req.request_id in self._retries:
            return self._retries[req.request_id]  # a retry of an answered request: same answer, no new row
        key = req.request_id or uuid.uuid4().hex
        time_s = float(req.time_s) if req.time_s is not None else time.time()
        rolled_back = bool(view.rolled_back)
        routed = policy_acts(
            view.mode,
            rolled_back=rolled_back,
            rollout_pct=view.rollout_pct,
            rollout_key=site if "site_id" in req.model_fields_set else key,
            salt=self.config.rollout_salt,
            schedule=self.config.ab,
            time_s=time_s,
        )
        session = self.sessions.get(site, rt)
        served = session.decide(x, time_s, routed)
        figures = (
            session.figures(x, served, self.config.rollback.change_threshold_w)
            if hasattr(session, "figures")
            else _NO_FIGURES
        )
        export = rt.domain == "export"
        pi_u = getattr(getattr(getattr(session, "pi_gate", None), "policy", None), "controller", None)
        record = {
            "key": key,
            "site_id": site,
            "domain": rt.domain,
            "time_s": time_s,
            "served_at": time.time(),
            "mode": view.mode,
            "rolled_back": rolled_back,
            "source": served.source,
            "policy_acted": routed,
            "model_version": rt.model_version,
            "checks": list(served.checks),
            "action_w": _r(served.sent_w),
            "policy_action_w": _r(served.policy.action_w),
            "policy_source": served.policy.source,
            "policy_checks": list(served.policy.checks_fired),
            "pi_action_w": _r(served.pi.action_w),
            "pi_checks": list(served.pi.checks_fired),
            "z_max": round(served.policy.z_max, 3) if np.isfinite(served.policy.z_max) else None,
            "policy_ms": round(served.policy.policy_s * 1e3, 4),
            "pi_integral_w": round(float(pi_u.u[0]), 3) if pi_u is not None else None,
            "resumed": served.resumed,
            "replica": self.replica,
            "state": [float(v) for v in x],
            "commands": self._commands(site, time_s, x) if export else [],
        }
        self.log.append(record)  # acknowledged only once it is in the write-ahead file
        self.metrics.decision(site, served, view.mode, figures)
        self.metrics.site_mode(site, view.mode, rt.model_version)
        self.history.record(site, view.mode, rt.model_version, figures, routed, served.source)
        if export:
            self._watch(site, rt, routed, served, x)
        response = {
            "action_w": record["action_w"],
            "source": served.source,
            "checks_fired": record["checks"],
            "model_version": rt.model_version,
            "mode": view.mode,
            "rolled_back": rolled_back,
            "site_id": site,
            "request_id": key,
            "spec_version": getattr(rt, "spec_version", SPEC_VERSION),
        }
        if getattr(rt, "action_names", None) is not None:  # another domain's actions (serve/domains.py)
            response["action_names"] = list(rt.action_names)
        if req.request_id is not None:
            self._retries[key] = response
            while len(self._retries) > RETRY_CACHE:
                self._retries.popitem(last=False)
        return response

    def _commands(self, site: str, time_s: float, x: np.ndarray) -> list[list]:
        """Virtual-slave command rows for the raw zigbee log (serve/decision_log.py)."""
        date = dt.datetime.fromtimestamp(round(time_s), dt.UTC).date().isoformat()
        acked = x[_ACKED]
        prev = self._acked_seen.get(site)
        self._acked_seen[site] = (date, acked.copy())
        if prev is None or prev[0] != date:
            return [[p + 1, round(float(acked[p]), 3), True] for p in range(3)]
        return [
            [p + 1, round(float(acked[p]), 3), False] for p in range(3) if abs(acked[p] - prev[1][p]) > 1e-6
        ]

    def _watch(self, site: str, rt: Runtime, routed: bool, served: Any, x: np.ndarray) -> None:
        now = time.monotonic()
        monitor = self.monitors.get(rt.sha256)
        if monitor is None:
            monitor = self.monitors[rt.sha256] = RollbackMonitor(self.config.rollback)
        monitor.record(
            now,
            site,
            routed,
            served.policy.checks_fired,
            x,
            served.sent_w,
            x[_TARGET],
            float(x[FEAT["export_w"]]),
            float(x[FEAT["pv_w"]]),
        )
        urgent = routed and any(c == "anomaly" or c in VIOLATIONS for c in served.policy.checks_fired)
        if not urgent and now < self._next_check.get(rt.sha256, 0.0):
            return
        self._next_check[rt.sha256] = now + ROLLBACK_CHECK_S
        default = rt.sha256 == self.control["bundle_sha256"]
        if self.control.get("rolled_back") or (default and self.control["mode"] == "shadow" and not urgent):
            return
        fired = monitor.check(now)
        if fired is not None:
            trigger, detail = fired
            self.roll_back(
                trigger, detail, by=f"monitor@{self.replica}", bundle_sha256=None if default else rt.sha256
            )
            self.metrics.rollbacks.labels(self.replica, trigger).inc()
            monitor.reset_policy()

    # --- admin

    def roll_back(
        self, trigger: str, detail: dict[str, Any], by: str, bundle_sha256: str | None = None
    ) -> dict[str, Any]:
        """Switch to the PI, recording why: the whole deployment, or (``bundle_sha256``) the sites that
        bundle serves as their own (no-op if already rolled back)."""
        record = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "trigger": trigger,
            "detail": detail,
            "by": by,
        }

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            if state.get("rolled_back"):
                return None
            if bundle_sha256 is None:
                return {"rolled_back": record}
            sites = {k: dict(v) for k, v in (state.get("sites") or {}).items()}
            hit = [
                k
                for k, v in sites.items()
                if v.get("bundle_sha256") == bundle_sha256 and not v.get("rolled_back")
            ]
            if not hit:
                return None
            for k in hit:
                sites[k]["rolled_back"] = record
            return {"sites": sites}

        event = {"event": "rollback", **record, **({"bundle_sha256": bundle_sha256} if bundle_sha256 else {})}
        state = self.store.update(change, event)
        self._apply(state)
        return state

    def set_mode(
        self, mode: str | None, rollout_pct: float | None, reason: str, by: str, site_id: str | None = None
    ) -> dict[str, Any]:
        """Change the mode and/or the percentage of the deployment or of one site; clears a rollback (the
        operator re-arms the policy)."""
        if mode is None and rollout_pct is None:
            raise AdminError("give mode and/or rollout_pct")
        if mode is not None and mode not in MODES:
            raise AdminError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        fields: dict[str, Any] = {"rolled_back": None}
        if mode is not None:
            fields["mode"] = mode
        if rollout_pct is not None:
            fields["rollout_pct"] = float(rollout_pct)
        event = {"event": "set_mode", **fields, "reason": reason, "by": by}
        if site_id is None:
            state = self.store.update(lambda s: fields, event)
        else:
            state = self.store.update(
                lambda s: {"sites": _with_site(s, site_id, fields)}, {**event, "site_id": site_id}
            )
        self._apply(state)
        return state

    def verify_bundle(self, path: str, site_id: str | None = None) -> Runtime:
        """Load and check a bundle for the deployment's default or for ``site_id`` (blocking: run it in a
        worker thread). AdminError 404 (no bundle there) or 409 (refused: it does not verify or does not
        fit), the old bundle serving on."""
        self.sync(force=True)
        view = site_view(self.control, site_id) if site_id is not None else None
        serving = (
            self.model_version
            if view is None
            else (self.cache.get(view.bundle_sha256) or self.default_runtime).model_version
        )
        try:
            rt = load_runtime(path)
        except BundleError as exc:
            status = 404 if "not found" in str(exc) else 409
            raise AdminError(f"bundle refused, {serving} keeps serving: {exc}", status) from exc
        if view is None or view.own_bundle:
            current = self.default_runtime if view is None else self.cache.get(view.bundle_sha256)
            cur_w = getattr(current, "max_power_per_phase_w", None)
            new_w = getattr(rt, "max_power_per_phase_w", None)
            if current is not None and cur_w is not None and new_w is not None and abs(cur_w - new_w) > 1e-9:
                raise AdminError(
                    f"bundle refused, {serving} keeps serving: {path}: action bound {new_w} W per phase, but "
                    f"the site(s) are served with {cur_w} W (bundle {current.path})",
                    409,
                )
        self.cache.put(rt)
        return rt

    def commit_bundle(self, rt: Runtime, reason: str, by: str, site_id: str | None = None) -> dict[str, Any]:
        """Serve a verified bundle (:meth:`verify_bundle`) from now on."""
        fields = {"bundle": rt.path, "bundle_sha256": rt.sha256}
        event = {
            "event": "swap_bundle",
            **fields,
            "model_version": rt.model_version,
            "reason": reason,
            "by": by,
        }
        if site_id is None:
            state = self.store.update(lambda s: fields, event)
        else:
            state = self.store.update(
                lambda s: {"sites": _with_site(s, site_id, {**fields, "rolled_back": None})},
                {**event, "site_id": site_id},
            )
        self._apply(state)
        return state

    def swap_bundle(self, path: str, reason: str, by: str, site_id: str | None = None) -> dict[str, Any]:
        """:meth:`verify_bundle` then :meth:`commit_bundle` (blocking)."""
        return self.commit_bundle(self.verify_bundle(path, site_id), reason, by, site_id)

    def flush(self) -> int:
        return self.log.flush()

    # --- status

    def health(self) -> dict[str, Any]:
        self.sync()
        c = self.control
        self.metrics.bundles.labels(self.replica).set(len(self.cache))
        return {
            "status": "degraded" if (self.bundle_error or self.log.last_error) else "ok",
            "replica": self.replica,
            "pid": os.getpid(),
            "model_version": self.model_version,
            "mode": c["mode"],
            "rollout_pct": c["rollout_pct"],
            "rolled_back": c.get("rolled_back"),
            "spec_version": SPEC_VERSION,
            "sessions": len(self.sessions),
            "sites_configured": len(c.get("sites") or {}),
            "bundles": {
                "loaded": self.cache.loaded(),
                "max": self.config.max_bundles,
                "loads": self.cache.loads,
                "evictions": self.cache.evictions,
            },
            "control_version": c.get("version"),
            "bundle_error": self.bundle_error,
            "log": {
                "dir": str(self.log_dir),
                "rows": self.log.rows_total,
                "pending_rows": self.log.pending_rows,
                "compacted_rows": self.log.compacted_rows,
                "last_error": self.log.last_error,
            },
            "admin": self.token_sha256 is not None,
        }

    def status(self) -> dict[str, Any]:
        self.sync(force=True)
        default = self.monitors.get(self.control["bundle_sha256"]) or RollbackMonitor(self.config.rollback)
        share, n = default.baseline_share(time.monotonic())
        return {
            **self.health(),
            "control": self.control,
            "rollback_config": self.config.rollback.__dict__,
            "baseline_export_share": share,
            "baseline_decisions": n,
        }

    def status_data(self) -> dict[str, Any]:
        """The status page's data: every replica's last hour, merged (serve/status.py)."""
        return merged(self.history)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.history.close()
        self.log.close()


def _with_site(state: dict[str, Any], site_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    sites = {k: dict(v) for k, v in (state.get("sites") or {}).items()}
    sites[site_id] = {**sites.get(site_id, {}), **fields}
    return sites
