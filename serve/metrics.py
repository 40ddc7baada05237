"""Prometheus metrics of the policy server (``GET /metrics``), one registry per replica.

Every series carries a ``replica`` label: a request lands on one replica, so with several replicas scrape
each (or sum over ``replica``); counters restart at 0 with a replica. Per-site series carry ``site``
(the fleet's figures are sums over it: ``sum without (site, replica)``); at most ``max_sites`` distinct
sites are labelled per replica, the others count under ``site="_other"`` (bounded cardinality).
Dashboards and alerts: ``cluster/monitoring/``.

======================================  ==================================================================
metric                                  meaning
======================================  ==================================================================
gridrl_act_latency_seconds              histogram of POST /act handling time in the replica (validation,
                                        both controllers, the log write), by ``site`` and status class
                                        (``site="_invalid"`` for requests refused before a site was known)
gridrl_decisions_total                  decisions by ``site``, ``source`` (policy, pi, fallback) and ``mode``
gridrl_safety_violations_total          violations caught in the policy gate, by ``site``, ``check`` and
                                        whether the policy was acting (``acting``: true/false)
gridrl_fallbacks_total                  responses whose source is ``fallback``, by ``site``
gridrl_anomalies_total                  requests on which the anomaly detector fired, by ``site``
gridrl_fallback_active_seconds          how long the site's policy gate has been in its timed fallback to
                                        the PI (s of the site's meter time; 0 when not in fallback)
gridrl_export_wh_total                  export energy each controller's targets lead to, by ``site`` and
                                        ``controller`` (policy, pi): the one-step prediction of the safety
                                        wrapper (export + acknowledged load - targets, summed over phases,
                                        positive part) x the decision period. Both controllers are
                                        evaluated on every request, so this compares the policy with the
                                        PI baseline in every mode, shadow included
gridrl_measured_export_wh_total         export energy the meter read, by ``site`` and ``acting`` (the
                                        controller whose targets were sent the second before)
gridrl_differing_decisions_total        decisions where the policy's targets differ from the PI's by more
                                        than ``change_threshold_w`` on a phase, by ``site``
gridrl_site_info                        1, by ``site``, its ``mode`` and the ``model_version`` serving it
gridrl_checks_fired_total               every check that fired in the decision sent, by ``check``
gridrl_rejected_requests_total          4xx answers of /act, by ``status``
gridrl_rollout_percent                  the deployment's default rollout percentage
gridrl_mode                             1 for the deployment's default mode, by ``mode``
gridrl_rolled_back                      1 while the deployment is rolled back to the PI
gridrl_rollbacks_total                  automatic rollbacks this replica triggered, by ``trigger``
gridrl_log_rows_total                   decisions written to the write-ahead log
gridrl_model_info                       1, labelled with the deployment's default ``model_version``
gridrl_bundles_loaded                   bundles loaded in this replica (bounded by ``max_bundles``)
======================================  ==================================================================
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serve.config import MODES
from serve.safety import VIOLATIONS

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER_SITE = "_other"
INVALID_SITE = "_invalid"


class _Site:
    """Cached label children of one site (labels() costs a lock and a dict look-up per call)."""

    __slots__ = (
        "ok", "bad", "decisions", "violations", "fallbacks", "anomalies", "fallback_s", "export_policy",
        "export_pi", "measured", "differ", "info",
    )  # fmt: skip


class ServerMetrics:
    """The replica's metrics (module docstring)."""

    def __init__(self, replica: str, max_sites: int = 2000):
        prometheus_client.disable_created_metrics()  # no *_created series: half the text, no use here
        self.registry = r = CollectorRegistry(auto_describe=True)
        lbl = ["replica"]
        self.replica, self.max_sites = replica, max_sites
        self.latency = Histogram(
            "gridrl_act_latency_seconds",
            "POST /act handling time in the replica",
            [*lbl, "site", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "gridrl_decisions", "decisions by site, source and mode", [*lbl, "site", "source", "mode"],
            registry=r,
        )  # fmt: skip
        self.violations = Counter(
            "gridrl_safety_violations",
            "violations caught in the policy gate",
            [*lbl, "site", "check", "acting"],
            registry=r,
        )
        self.fallbacks = Counter(
            "gridrl_fallbacks", "responses from the fallback", [*lbl, "site"], registry=r
        )
        self.anomalies = Counter("gridrl_anomalies", "requests with an anomaly", [*lbl, "site"], registry=r)
        self.fallback_active = Gauge(
            "gridrl_fallback_active_seconds", "time in the policy gate's timed fallback", [*lbl, "site"],
            registry=r,
        )  # fmt: skip
        self.export = Counter(
            "gridrl_export_wh", "predicted export energy of each controller's targets",
            [*lbl, "site", "controller"], registry=r,
        )  # fmt: skip
        self.measured_export = Counter(
            "gridrl_measured_export_wh", "export energy read by the meter, by the controller acting before",
            [*lbl, "site", "acting"], registry=r,
        )  # fmt: skip
        self.differ = Counter(
            "gridrl_differing_decisions", "policy targets differ from the PI's", [*lbl, "site"], registry=r
        )
        self.site_info = Gauge(
            "gridrl_site_info", "a site's mode and model version", [*lbl, "site", "mode", "model_version"],
            registry=r,
        )  # fmt: skip
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
        self.bundles = Gauge("gridrl_bundles_loaded", "bundles loaded in this replica", lbl, registry=r)
        self._model: str | None = None
        self._sites: dict[str, _Site] = {}
        self._info: dict[str, tuple[str, str]] = {}
        self._invalid = self.latency.labels(replica, INVALID_SITE, "4xx")

    def site(self, site_id: str) -> _Site:
        """The site's series (created at its first decision; beyond ``max_sites``: ``_other``)."""
        s = self._sites.get(site_id)
        if s is not None:
            return s
        if len(self._sites) >= self.max_sites and site_id != OTHER_SITE:
            return self.site(OTHER_SITE)
        rep = self.replica
        s = _Site()
        s.ok = self.latency.labels(rep, site_id, "2xx")
        s.bad = self.latency.labels(rep, site_id, "4xx")
        s.decisions = {(src, m): self.decisions.labels(rep, site_id, src, m) for src in
                       ("policy", "pi", "fallback") for m in MODES}  # fmt: skip
        s.violations = {(c, a): self.violations.labels(rep, site_id, c, a) for c in VIOLATIONS
                        for a in ("true", "false")}  # fmt: skip
        s.fallbacks = self.fallbacks.labels(rep, site_id)
        s.anomalies = self.anomalies.labels(rep, site_id)
        s.fallback_s = self.fallback_active.labels(rep, site_id)
        s.export_policy = self.export.labels(rep, site_id, "policy")
        s.export_pi = self.export.labels(rep, site_id, "pi")
        s.measured = {a: self.measured_export.labels(rep, site_id, a) for a in ("policy", "pi")}
        s.differ = self.differ.labels(rep, site_id)
        s.info = None
        self._sites[site_id] = s
        return s

    def latency_of(self, site_id: str | None, ok: bool):
        if site_id is None:
            return self._invalid
        s = self.site(site_id)
        return s.ok if ok else s.bad

    def site_mode(self, site_id: str, mode: str, model_version: str) -> None:
        s = self.site(site_id)
        key = (mode, model_version)
        label = site_id if s is self._sites.get(site_id) else OTHER_SITE
        old = self._info.get(label)
        if old == key:
            return
        if old is not None:
            self.site_info.remove(self.replica, label, *old)
        self.site_info.labels(self.replica, label, mode, model_version).set(1.0)
        self._info[label] = key

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

    def decision(self, site_id: str, served, mode: str, figures: dict[str, float]) -> None:
        """Count one decision (``served``: serve/session.py Served; ``figures``: :func:`decision_figures`)."""
        s = self.site(site_id)
        s.decisions[(served.source, mode)].inc()
        if served.source == "fallback":
            s.fallbacks.inc()
        pchecks = served.policy.checks_fired
        if "anomaly" in pchecks:
            s.anomalies.inc()
        acting = "true" if served.policy_acted else "false"
        for c in pchecks:
            if c in VIOLATIONS:
                s.violations[(c, acting)].inc()
        for c in served.checks:
            self.checks.labels(self.replica, c).inc()
        s.fallback_s.set(figures["fallback_s"])
        s.export_policy.inc(figures["export_policy_wh"])
        s.export_pi.inc(figures["export_pi_wh"])
        if figures["measured_by"]:
            s.measured[figures["measured_by"]].inc(figures["measured_wh"])
        if figures["differ"]:
            s.differ.inc()
        self.log_rows.labels(self.replica).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
