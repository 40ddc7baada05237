"""Prometheus metrics of the policy server (``GET /metrics``), one registry per replica.

Every series carries a ``replica`` label: a request lands on one replica, so with several replicas scrape
each (or sum over ``replica``); counters restart at 0 with a replica.

======================================  ==================================================================
metric                                  meaning
======================================  ==================================================================
gridrl_act_latency_seconds              histogram of POST /act handling time in the replica (validation,
                                        both controllers, the log write), by status class
gridrl_decisions_total                  decisions by ``source`` (policy, pi, fallback) and ``mode``
gridrl_safety_violations_total          violations caught in the policy gate, by ``check`` and whether the
                                        policy was acting (``acting``: true/false)
gridrl_fallbacks_total                  responses whose source is ``fallback``
gridrl_anomalies_total                  requests on which the anomaly detector fired
gridrl_checks_fired_total               every check that fired in the decision sent, by ``check``
gridrl_rejected_requests_total          4xx answers of /act, by ``status``
gridrl_rollout_percent                  the rollout percentage in force
gridrl_mode                             1 for the mode in force, by ``mode``
gridrl_rolled_back                      1 while the deployment is rolled back to the PI
gridrl_rollbacks_total                  automatic rollbacks this replica triggered, by ``trigger``
gridrl_log_rows_total                   decisions written to the write-ahead log
gridrl_model_info                       1, labelled with the ``model_version`` served
======================================  ==================================================================
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serve.config import MODES
from serve.safety import VIOLATIONS

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The replica's metrics (module docstring)."""

    def __init__(self, replica: str):
        prometheus_client.disable_created_metrics()  # no *_created series: half the text, no use here
        self.registry = r = CollectorRegistry(auto_describe=True)
        lbl = ["replica"]
        self.replica = replica
        self.latency = Histogram(
            "gridrl_act_latency_seconds",
            "POST /act handling time in the replica",
            [*lbl, "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "gridrl_decisions", "decisions by source and mode", [*lbl, "source", "mode"], registry=r
        )
        self.violations = Counter(
            "gridrl_safety_violations",
            "violations caught in the policy gate",
            [*lbl, "check", "acting"],
            registry=r,
        )
        self.fallbacks = Counter("gridrl_fallbacks", "responses from the fallback", lbl, registry=r)
        self.anomalies = Counter("gridrl_anomalies", "requests with an anomaly", lbl, registry=r)
        self.checks = Counter(
            "gridrl_checks_fired", "checks fired in the decision sent", [*lbl, "check"], registry=r
        )
        self.rejected = Counter(
            "gridrl_rejected_requests", "4xx answers of /act", [*lbl, "status"], registry=r
        )
        self.rollout = Gauge("gridrl_rollout_percent", "rollout percentage in force", lbl, registry=r)
        self.mode = Gauge("gridrl_mode", "1 for the mode in force", [*lbl, "mode"], registry=r)
        self.rolled_back = Gauge("gridrl_rolled_back", "1 while rolled back to the PI", lbl, registry=r)
        self.rollbacks = Counter(
            "gridrl_rollbacks", "automatic rollbacks triggered", [*lbl, "trigger"], registry=r
        )
        self.log_rows = Counter(
            "gridrl_log_rows", "decisions written to the write-ahead log", lbl, registry=r
        )
        self.model = Gauge(
            "gridrl_model_info", "the model version served", [*lbl, "model_version"], registry=r
        )
        for check in VIOLATIONS:  # visible at 0 before the first one
            for acting in ("true", "false"):
                self.violations.labels(replica, check, acting)
        for source in ("policy", "pi", "fallback"):
            for mode in MODES:
                self.decisions.labels(replica, source, mode)
        self.fallbacks.labels(replica)
        self.anomalies.labels(replica)
        self._model: str | None = None

    def control(self, mode: str, rollout_pct: float, rolled_back: bool, model_version: str) -> None:
        rep = self.replica
        self.rollout.labels(rep).set(rollout_pct)
        for m in MODES:
            self.mode.labels(rep, m).set(1.0 if m == mode else 0.0)
        self.rolled_back.labels(rep).set(1.0 if rolled_back else 0.0)
        if model_version != self._model:
            if self._model is not None:
                self.model.labels(rep, self._model).set(0.0)
            self.model.labels(rep, model_version).set(1.0)
            self._model = model_version

    def decision(
        self,
        source: str,
        mode: str,
        checks: tuple[str, ...],
        policy_checks: tuple[str, ...],
        policy_acted: bool,
    ) -> None:
        rep = self.replica
        self.decisions.labels(rep, source, mode).inc()
        if source == "fallback":
            self.fallbacks.labels(rep).inc()
        if "anomaly" in policy_checks:
            self.anomalies.labels(rep).inc()
        for c in policy_checks:
            if c in VIOLATIONS:
                self.violations.labels(rep, c, "true" if policy_acted else "false").inc()
        for c in checks:
            self.checks.labels(rep, c).inc()
        self.log_rows.labels(rep).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
