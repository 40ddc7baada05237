"""The policy server's logic, without Ray or HTTP: one :class:`PolicyService` per Serve replica.

Per request (:meth:`PolicyService.act`): re-read the shared control state when it is due
(serve/control.py), route by mode (serve/modes.py), evaluate both controllers of the site's session
(serve/session.py), write the decision to the write-ahead log (serve/decision_log.py), count it
(serve/metrics.py), feed the rollback monitor (serve/rollback.py) and, when a trigger fires, roll the
whole deployment back to the PI. The response is built only after the log write returned.

Admin operations (mode and percentage, bundle swap, manual rollback, flush) change the control state; a
bundle swap is verified here first (:func:`serve.bundle.load_bundle`: hashes, state spec, ONNX known
answers, plus the same action bound as the bundle served) and refused with the reason otherwise, the old
bundle serving on. Other replicas load a new bundle when they see it in the control state, and keep the
old one (reported by ``/healthz``) if it does not load there or its manifest changed since it was checked.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from envs.site import DEFAULT_SITE_PATH
from envs.state_spec import FEAT, SPEC_VERSION
from serve.api import ActRequest
from serve.bundle import Bundle, BundleError, load_bundle
from serve.config import MODES, ServeConfig, admin_token_digest
from serve.control import ControlStore
from serve.decision_log import DecisionLog
from serve.metrics import ServerMetrics
from serve.modes import policy_acts
from serve.rollback import RollbackMonitor
from serve.safety import VIOLATIONS
from serve.session import Sessions

_ACKED = [FEAT[f"acked_w_l{p}"] for p in (1, 2, 3)]
_TARGET = [FEAT[f"target_w_l{p}"] for p in (1, 2, 3)]
RETRY_CACHE = 10_000
ROLLBACK_CHECK_S = 0.5


class AdminError(ValueError):
    """An admin request that cannot be carried out (HTTP 409/422); the message says why."""


def model_version(bundle: Bundle) -> str:
    return f"{bundle.name}:{str(bundle.manifest.get('manifest_sha256', ''))[:12]}"


def site_yaml_of(bundle: Bundle) -> Path | None:
    """The bundle's site file, for the raw logs' ``site.yaml`` (None if it is not readable here)."""
    path = (bundle.manifest.get("site") or {}).get("path")
    p = Path(path) if path else DEFAULT_SITE_PATH
    return p if p.is_file() else None


def _r(v: np.ndarray) -> list[float]:
    return [round(float(a), 3) for a in v]


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
        bundle = load_bundle(config.bundle)
        self.store = ControlStore(self.log_dir)
        deployed = {"bundle": str(config.bundle), "mode": config.mode, "rollout_pct": config.rollout_pct}
        state = self.store.init(deployed, bundle.manifest["manifest_sha256"])
        self.bundle_error: str | None = None
        if state["bundle_sha256"] != bundle.manifest["manifest_sha256"]:  # an admin swap before a restart
            try:
                bundle = self._load_checked(state["bundle"], state["bundle_sha256"], bundle)
            except (BundleError, OSError, ValueError) as exc:
                self.bundle_error = f"serving the deployed bundle: the swapped-in one fails here: {exc}"
        self._use_bundle(bundle)
        self.metrics = ServerMetrics(replica)
        self.monitor = RollbackMonitor(config.rollback)
        self.log = DecisionLog(self.log_dir, replica, config.log, site_yaml_of(bundle))
        self._retries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._acked_seen: dict[str, tuple[str, np.ndarray]] = {}
        self.control: dict[str, Any] = {}
        self._version = -1
        self._next_poll = 0.0
        self._next_check = 0.0
        self._apply(state)

    # --- control state

    def _use_bundle(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.model_version = model_version(bundle)
        self.sessions = Sessions(bundle, self.config.max_sites)

    def _load_checked(self, path: str, sha256: str, current: Bundle | None) -> Bundle:
        """Load ``path`` and check it is the bundle the control state names and fits the sites."""
        bundle = load_bundle(path)
        if bundle.manifest["manifest_sha256"] != sha256:
            raise BundleError(f"{path}: manifest changed since it was accepted (sha256 differs)")
        if current is not None and abs(bundle.max_power_per_phase_w - current.max_power_per_phase_w) > 1e-9:
            raise BundleError(
                f"{path}: action bound {bundle.max_power_per_phase_w} W per phase, but the sites are served "
                f"with {current.max_power_per_phase_w} W (bundle {current.path})"
            )
        return bundle

    def _apply(self, state: dict[str, Any]) -> None:
        old = self.control
        if old and state.get("bundle_sha256") != self.bundle.manifest["manifest_sha256"]:
            try:
                self._use_bundle(self._load_checked(state["bundle"], state["bundle_sha256"], self.bundle))
                self.bundle_error = None
                self.monitor.reset_policy()
            except (BundleError, OSError, ValueError) as exc:
                self.bundle_error = f"kept {self.model_version}: {exc}"
        if old and old.get("rolled_back") and not state.get("rolled_back"):
            self.monitor.reset_policy()  # re-armed by an operator: old violations no longer count
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

    # --- decisions

    def act(self, req: ActRequest, x: np.ndarray | None = None) -> dict[str, Any]:
        """Decide for one validated request (``x``: its ``vector()``, computed here if not given)."""
        x = req.vector() if x is None else x
        if req.request_id is not None and req.request_id in self._retries:
            return self._retries[req.request_id]  # a retry of an answered request: same answer, no new row
        self.sync()
        c = self.control
        key = req.request_id or uuid.uuid4().hex
        time_s = float(req.time_s) if req.time_s is not None else time.time()
        rolled_back = bool(c.get("rolled_back"))
        routed = policy_acts(
            c["mode"],
            rolled_back=rolled_back,
            rollout_pct=float(c["rollout_pct"]),
            rollout_key=req.site_id if "site_id" in req.model_fields_set else key,
            salt=self.config.rollout_salt,
            schedule=self.config.ab,
            time_s=time_s,
        )
        session = self.sessions.get(req.site_id)
        served = session.decide(x, time_s, routed)
        pi_u = session.pi_gate.policy.controller.u
        record = {
            "key": key,
            "site_id": req.site_id,
            "time_s": time_s,
            "served_at": time.time(),
            "mode": c["mode"],
            "rolled_back": rolled_back,
            "source": served.source,
            "policy_acted": routed,
            "model_version": self.model_version,
            "checks": list(served.checks),
            "action_w": _r(served.sent_w),
            "policy_action_w": _r(served.policy.action_w),
            "policy_source": served.policy.source,
            "policy_checks": list(served.policy.checks_fired),
            "pi_action_w": _r(served.pi.action_w),
            "pi_checks": list(served.pi.checks_fired),
            "z_max": round(served.policy.z_max, 3) if np.isfinite(served.policy.z_max) else None,
            "policy_ms": round(served.policy.policy_s * 1e3, 4),
            "pi_integral_w": round(float(pi_u[0]), 3),
            "resumed": served.resumed,
            "replica": self.replica,
            "state": [float(v) for v in x],
            "commands": self._commands(req.site_id, time_s, x),
        }
        self.log.append(record)  # acknowledged only once it is in the write-ahead file
        self.metrics.decision(served.source, c["mode"], served.checks, served.policy.checks_fired, routed)
        self._watch(req.site_id, routed, served, x)
        response = {
            "action_w": record["action_w"],
            "source": served.source,
            "checks_fired": record["checks"],
            "model_version": self.model_version,
            "mode": c["mode"],
            "rolled_back": rolled_back,
            "site_id": req.site_id,
            "request_id": key,
            "spec_version": SPEC_VERSION,
        }
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

    def _watch(self, site: str, routed: bool, served: Any, x: np.ndarray) -> None:
        now = time.monotonic()
        self.monitor.record(
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
        if not urgent and now < self._next_check:
            return
        self._next_check = now + ROLLBACK_CHECK_S
        if self.control.get("rolled_back") or self.control["mode"] == "shadow":
            return
        fired = self.monitor.check(now)
        if fired is not None:
            trigger, detail = fired
            self.roll_back(trigger, detail, by=f"monitor@{self.replica}")
            self.metrics.rollbacks.labels(self.replica, trigger).inc()

    # --- admin

    def roll_back(self, trigger: str, detail: dict[str, Any], by: str) -> dict[str, Any]:
        """Switch the deployment to the PI, recording why (no-op if already rolled back)."""
        record = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "trigger": trigger,
            "detail": detail,
            "by": by,
        }

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            return None if state.get("rolled_back") else {"rolled_back": record}

        state = self.store.update(change, {"event": "rollback", **record})
        self._apply(state)
        return state

    def set_mode(self, mode: str | None, rollout_pct: float | None, reason: str, by: str) -> dict[str, Any]:
        """Change the mode and/or the percentage; clears a rollback (the operator re-arms the policy)."""
        if mode is None and rollout_pct is None:
            raise AdminError("give mode and/or rollout_pct")
        if mode is not None and mode not in MODES:
            raise AdminError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        fields: dict[str, Any] = {"rolled_back": None}
        if mode is not None:
            fields["mode"] = mode
        if rollout_pct is not None:
            fields["rollout_pct"] = float(rollout_pct)
        state = self.store.update(
            lambda s: fields, {"event": "set_mode", **fields, "reason": reason, "by": by}
        )
        self._apply(state)
        return state

    def swap_bundle(self, path: str, reason: str, by: str) -> dict[str, Any]:
        """Verify ``path`` and serve it; AdminError (the old bundle keeps serving) if it does not fit."""
        try:
            bundle = load_bundle(path)
            bundle = self._load_checked(path, bundle.manifest["manifest_sha256"], self.bundle)
        except (BundleError, OSError, ValueError) as exc:
            raise AdminError(f"bundle refused, {self.model_version} keeps serving: {exc}") from exc
        fields = {"bundle": str(path), "bundle_sha256": bundle.manifest["manifest_sha256"]}
        event = {
            "event": "swap_bundle",
            **fields,
            "model_version": model_version(bundle),
            "reason": reason,
            "by": by,
        }
        state = self.store.update(lambda s: fields, event)
        self._apply(state)
        return state

    def flush(self) -> int:
        return self.log.flush()

    # --- status

    def health(self) -> dict[str, Any]:
        self.sync()
        c = self.control
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
        share, n = self.monitor.baseline_share(time.monotonic())
        return {
            **self.health(),
            "control": self.control,
            "rollback_config": self.config.rollback.__dict__,
            "baseline_export_share": share,
            "baseline_decisions": n,
        }

    def close(self) -> None:
        self.log.close()
