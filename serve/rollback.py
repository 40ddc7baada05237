"""Automatic rollback to the PI: four triggers over a rolling window of the decisions a replica served.

Every decision is recorded (:meth:`RollbackMonitor.record`); :meth:`RollbackMonitor.check` returns the
first trigger that fires, with the numbers behind it, or None. The server then switches the whole
deployment to the PI through the shared control state (serve/control.py), recording why.

==============  =========================================================================================
trigger         fires when, over the last ``window_s`` (serve/config.py RollbackConfig)
==============  =========================================================================================
violation       the safety wrapper caught ``max_violations`` violations of the policy (policy_error,
                policy_deadline, policy_output) on requests the policy was answering
anomaly         the wrapper's anomaly detector fired ``max_anomalies`` times on such requests
oscillation     more than ``max_changes_per_min`` target changes per minute per site while the policy
                acts (a change: a phase's target moves by more than ``change_threshold_w`` from the
                previous target in the state; one request per site and second)
export          the policy's export share of PV (sum of positive export / sum of PV over its seconds) is
                more than ``export_worse_pct`` % above the PI's, measured over the PI's seconds of the
                last ``baseline_window_s`` (or ``baseline_export_share``)
==============  =========================================================================================

Export is attributed to the controller that answered the site's previous request (its targets shaped the
export the next reading shows). Dividing by PV discounts the weather, not all of it: the export trigger
needs ``min_policy_decisions`` and ``min_baseline_decisions`` before it is evaluated. Counts are kept in
10 s buckets, so memory does not grow with the request rate.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from serve.config import RollbackConfig
from serve.safety import VIOLATIONS

BUCKET_S = 10.0
# policy columns: decisions, violations, anomalies, changes, export+, pv; pi columns: decisions, export+, pv
_P_N, _P_VIOL, _P_ANOM, _P_CHG, _P_EXP, _P_PV, _P_EXPN = range(7)
_B_N, _B_EXP, _B_PV = range(3)


class RollingSums:
    """Sums of a few quantities over a sliding time window, in fixed buckets."""

    def __init__(self, width: int, keep_s: float):
        self.width, self.keep_s = width, keep_s
        self.buckets: deque[tuple[float, np.ndarray]] = deque()

    def add(self, t: float, values: np.ndarray) -> None:
        start = t - t % BUCKET_S
        if not self.buckets or self.buckets[-1][0] != start:
            self.buckets.append((start, np.zeros(self.width)))
            while self.buckets and self.buckets[0][0] < t - self.keep_s - BUCKET_S:
                self.buckets.popleft()
        self.buckets[-1][1][:] += values

    def total(self, now: float, window_s: float) -> np.ndarray:
        out = np.zeros(self.width)
        for start, v in self.buckets:
            if start + BUCKET_S > now - window_s:
                out += v
        return out

    def clear(self) -> None:
        self.buckets.clear()


class RollbackMonitor:
    """Records decisions and evaluates the rollback triggers (module docstring)."""

    def __init__(self, config: RollbackConfig):
        self.config = config
        self.policy = RollingSums(7, config.window_s)
        self.baseline = RollingSums(3, config.baseline_window_s)
        self.last_acted: dict[str, bool] = {}

    def reset_policy(self) -> None:
        """Forget the policy's window (after an operator re-arms it, or a new bundle)."""
        self.policy.clear()

    def record(
        self,
        now: float,
        site_id: str,
        policy_acted: bool,
        policy_checks: tuple[str, ...],
        state: np.ndarray,
        sent_w: np.ndarray,
        prev_target_w: np.ndarray,
        export_w: float,
        pv_w: float,
    ) -> None:
        """One served decision; ``policy_checks`` are the checks of the policy's evaluation."""
        prev = self.last_acted.get(site_id)
        self.last_acted[site_id] = policy_acted
        exp, pv = max(export_w, 0.0), max(pv_w, 0.0)
        row = np.zeros(7)
        if policy_acted:
            row[_P_N] = 1
            row[_P_VIOL] = any(c in VIOLATIONS for c in policy_checks)
            row[_P_ANOM] = "anomaly" in policy_checks
            row[_P_CHG] = bool(np.any(np.abs(sent_w - prev_target_w) > self.config.change_threshold_w))
        if prev is True:
            row[_P_EXP], row[_P_PV], row[_P_EXPN] = exp, pv, 1
        if row.any():
            self.policy.add(now, row)
        if prev is False:
            self.baseline.add(now, np.array([1.0, exp, pv]))

    def check(self, now: float) -> tuple[str, dict[str, Any]] | None:
        """The first trigger that fires, with its numbers, or None."""
        c = self.config
        if not c.enabled:
            return None
        p = self.policy.total(now, c.window_s)
        n = int(p[_P_N])
        base = {"window_s": c.window_s, "policy_decisions": n}
        if p[_P_VIOL] >= c.max_violations:
            return "violation", {**base, "violations": int(p[_P_VIOL]), "max": c.max_violations}
        if p[_P_ANOM] >= c.max_anomalies:
            return "anomaly", {**base, "anomalies": int(p[_P_ANOM]), "max": c.max_anomalies}
        if n < c.min_policy_decisions:
            return None
        per_min = p[_P_CHG] / n * 60.0
        if per_min > c.max_changes_per_min:
            return "oscillation", {
                **base,
                "changes_per_min": round(per_min, 2),
                "max": c.max_changes_per_min,
            }
        return self._export(now, p, base)

    def baseline_share(self, now: float) -> tuple[float | None, int]:
        """The PI's export share of PV and the decisions it rests on."""
        if self.config.baseline_export_share is not None:
            return self.config.baseline_export_share, -1
        b = self.baseline.total(now, self.config.baseline_window_s)
        n = int(b[_B_N])
        if n < self.config.min_baseline_decisions or b[_B_PV] <= 0:
            return None, n
        return float(b[_B_EXP] / b[_B_PV]), n

    def _export(self, now: float, p: np.ndarray, base: dict[str, Any]) -> tuple[str, dict] | None:
        c = self.config
        share_pi, n_pi = self.baseline_share(now)
        if share_pi is None or p[_P_EXPN] < c.min_policy_decisions or p[_P_PV] <= 0:
            return None
        share = float(p[_P_EXP] / p[_P_PV])
        if share > share_pi * (1.0 + c.export_worse_pct / 100.0) and share - share_pi > 1e-6:
            return "export", {
                **base,
                "policy_export_share": round(share, 5),
                "pi_export_share": round(share_pi, 5),
                "pi_decisions": n_pi,
                "worse_pct": round((share / share_pi - 1.0) * 100.0, 2) if share_pi > 0 else None,
                "max_pct": c.export_worse_pct,
            }
        return None
