"""The status page (``GET /status``) and its data (``GET /status/data``): the last hour, per site.

Each replica keeps, per site and per minute of the last hour (server clock), the counts of
:data:`FIELDS`, and writes them every :data:`SNAPSHOT_S` seconds (a thread of its own, traffic or not) to
``LOG_DIR/status/<replica>.npz`` (shared storage, like the logs). ``/status/data`` merges every replica's
snapshot (its own live), so the page shows the whole deployment whichever replica answers. The page is
plain HTML with an inline script (nothing is fetched from elsewhere): per site, the mode and model, the
shadow policy's export against the acting controller's per minute as a plot, decisions that differ and
violations, and the alerts firing. The alerts are those of ``cluster/monitoring/alerts.yml``, evaluated
here on the same figures with the same thresholds (:data:`ALERTS`; a test checks the two agree).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

STATUS_DIR = "status"
SNAPSHOT_S = 5.0
MINUTES = 60
STALE_S = 300.0
FIELDS = (
    "decisions",
    "policy_acted",
    "differ",
    "violations",
    "anomalies",
    "fallbacks",
    "export_policy_wh",
    "export_pi_wh",
    "export_sent_wh",
)
_F = {f: i for i, f in enumerate(FIELDS)}

ALERTS = {
    "GridrlExportAboveBaseline": {"ratio": 1.10, "window_min": 60, "min_decisions": 1800},
    "GridrlSafetyViolation": {"window_min": 5, "min_count": 1},
    "GridrlRepeatedAnomalies": {"window_min": 60, "min_count": 3},
    "GridrlFallbackOver24h": {"seconds": 86400.0},
}
"""Thresholds of cluster/monitoring/alerts.yml (seed 000's): export more than 10 % above the baseline's
over an hour (with at least half an hour of decisions), any safety violation (in the last 5 minutes),
3 or more anomalies in an hour, the fallback active for more than 24 h."""


class SiteHistory:
    """Per-site, per-minute counts of the last hour in one replica (module docstring)."""

    def __init__(self, replica: str, log_dir: str | Path | None, max_sites: int = 10_000):
        self.replica, self.max_sites = replica, max_sites
        self.dir = Path(log_dir) / STATUS_DIR if log_dir is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, int] = {}
        self._data = np.zeros((64, MINUTES, len(FIELDS)), np.float64)
        self._slot_minute = np.full(MINUTES, -1, np.int64)
        self._info: dict[str, tuple[str, str, float, float]] = {}  # mode, model, fallback_s, last seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self.dir is not None:  # written while the replica lives, traffic or not (a dead one's goes stale)
            threading.Thread(target=self._snapshots, name="status-snapshot", daemon=True).start()

    def _snapshots(self) -> None:
        while not self._stop.wait(SNAPSHOT_S):
            try:
                self.snapshot()
            except OSError:
                pass  # the next one tries again

    def close(self) -> None:
        self._stop.set()
        if self.dir is not None:
            self.snapshot()

    def _row(self, site: str) -> int:
        i = self._index.get(site)
        if i is None:
            if len(self._index) >= self.max_sites:
                return -1
            i = self._index[site] = len(self._index)
            if i >= len(self._data):
                grown = np.zeros((2 * len(self._data), MINUTES, len(FIELDS)), np.float64)
                grown[: len(self._data)] = self._data
                self._data = grown
        return i

    def record(self, site: str, mode: str, model: str, figures: dict[str, Any], policy_acted: bool,
               source: str, now: float | None = None) -> None:  # fmt: skip
        now = time.time() if now is None else now
        minute = int(now // 60)
        slot = minute % MINUTES
        with self._lock:
            i = self._row(site)
            if i < 0:
                return
            if self._slot_minute[slot] != minute:
                self._data[:, slot, :] = 0.0
                self._slot_minute[slot] = minute
            row = self._data[i, slot]
            row[_F["decisions"]] += 1
            row[_F["policy_acted"]] += policy_acted
            row[_F["differ"]] += figures["differ"]
            row[_F["violations"]] += figures["violation"]
            row[_F["anomalies"]] += figures["anomaly"]
            row[_F["fallbacks"]] += source == "fallback"
            row[_F["export_policy_wh"]] += figures["export_policy_wh"]
            row[_F["export_pi_wh"]] += figures["export_pi_wh"]
            row[_F["export_sent_wh"]] += figures["export_policy_wh" if policy_acted else "export_pi_wh"]
            self._info[site] = (mode, model, float(figures["fallback_s"]), now)

    def arrays(self) -> dict[str, Any]:
        with self._lock:
            sites = list(self._index)
            return {
                "sites": sites,
                "data": self._data[: len(sites)].copy(),
                "slot_minute": self._slot_minute.copy(),
                "info": [self._info.get(s, ("", "", 0.0, 0.0)) for s in sites],
                "written_at": time.time(),
            }

    def snapshot(self) -> None:
        """Write this replica's arrays for the other replicas' ``/status/data`` (atomic rename)."""
        if self.dir is None:
            return
        a = self.arrays()
        tmp = self.dir / f".{self.replica}.{os.getpid()}.npz"
        info = np.array([[m, v, str(f), str(t)] for m, v, f, t in a["info"]], dtype=str).reshape(-1, 4)
        with open(tmp, "wb") as f:
            np.savez(f, sites=np.array(a["sites"], dtype=str), data=a["data"], slot_minute=a["slot_minute"],
                     info=info, written_at=np.array(a["written_at"]))  # fmt: skip
        os.replace(tmp, self.dir / f"{self.replica}.npz")


def _load(path: Path) -> dict[str, Any] | None:
    try:
        with np.load(path) as z:
            info = [(m, v, float(f), float(t)) for m, v, f, t in z["info"].tolist()]
            return {
                "sites": z["sites"].tolist(),
                "data": z["data"],
                "slot_minute": z["slot_minute"],
                "info": info,
                "written_at": float(z["written_at"]),
            }
    except (OSError, ValueError, KeyError):
        return None


def merged(history: SiteHistory, now: float | None = None) -> dict[str, Any]:
    """Every replica's last hour merged by site and minute, with the alerts firing (the page's data)."""
    now = time.time() if now is None else now
    current = int(now // 60)
    parts = [history.arrays()]
    if history.dir is not None:
        for p in sorted(history.dir.glob("*.npz")):
            if p.stem == history.replica:
                continue
            a = _load(p)
            if a is not None and now - a["written_at"] < STALE_S:
                parts.append(a)
    series: dict[str, np.ndarray] = {}
    info: dict[str, tuple[str, str, float, float]] = {}
    for a in parts:
        ago = current - a["slot_minute"]  # minutes ago each slot holds
        valid = (ago >= 0) & (ago < MINUTES) & (a["slot_minute"] >= 0)
        for i, site in enumerate(a["sites"]):
            s = series.setdefault(site, np.zeros((MINUTES, len(FIELDS))))
            s[MINUTES - 1 - ago[valid]] += a["data"][i][valid]
            if site not in info or a["info"][i][3] > info[site][3]:
                info[site] = a["info"][i]
    sites = []
    for site in sorted(series):
        s = series[site]
        mode, model, fallback_s, seen = info[site]
        sites.append(
            {
                "site_id": site,
                "mode": mode,
                "model_version": model,
                "fallback_s": fallback_s,
                "last_seen_s_ago": round(now - seen, 1),
                "totals": {f: round(float(s[:, j].sum()), 4) for j, f in enumerate(FIELDS)},
                "minutes": {f: [round(float(v), 4) for v in s[:, _F[f]]] for f in
                            ("decisions", "differ", "violations", "export_policy_wh", "export_sent_wh")},
                "alerts": site_alerts(s, fallback_s),
            }
        )  # fmt: skip
    firing = [{"alert": a, "site_id": s["site_id"]} for s in sites for a in s["alerts"]]
    return {"generated_at": now, "replicas": len(parts), "minutes": MINUTES, "sites": sites, "firing": firing}


def site_alerts(s: np.ndarray, fallback_s: float) -> list[str]:
    """The alerts of :data:`ALERTS` firing for one site's last hour ``s`` (minutes x FIELDS, newest last)."""
    out = []
    a = ALERTS["GridrlExportAboveBaseline"]
    w = s[-a["window_min"] :]
    pol, pi = w[:, _F["export_policy_wh"]].sum(), w[:, _F["export_pi_wh"]].sum()
    if w[:, _F["decisions"]].sum() >= a["min_decisions"] and pol > a["ratio"] * pi:
        out.append("GridrlExportAboveBaseline")
    a = ALERTS["GridrlSafetyViolation"]
    if s[-a["window_min"] :, _F["violations"]].sum() >= a["min_count"]:
        out.append("GridrlSafetyViolation")
    a = ALERTS["GridrlRepeatedAnomalies"]
    if s[-a["window_min"] :, _F["anomalies"]].sum() >= a["min_count"]:
        out.append("GridrlRepeatedAnomalies")
    if fallback_s > ALERTS["GridrlFallbackOver24h"]["seconds"]:
        out.append("GridrlFallbackOver24h")
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridrl fleet status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}
td.l,th.l{text-align:left}.firing{color:#b00;font-weight:bold}.ok{color:#070}
svg{background:#fafafa;border:1px solid #ddd}.pol{stroke:#c60;fill:none}.act{stroke:#06c;fill:none}
</style></head><body>
<h1>gridrl fleet status</h1>
<p>Last hour per site: predicted export of the shadow policy's targets
(<span style="color:#c60">orange</span>) against the acting controller's
(<span style="color:#06c">blue</span>), Wh per minute; decisions where the
two differ; safety violations. Refreshed every 2 s from <code>/status/data</code>.</p>
<h2>Alerts firing</h2><ul id="alerts"><li class="ok">none</li></ul>
<p id="meta"></p>
<table id="sites"><thead><tr><th class="l">site</th><th class="l">mode</th><th class="l">model</th>
<th>decisions</th><th>policy acted</th><th>differ</th><th>violations</th><th>export policy Wh</th>
<th>export acting Wh</th><th class="l">last hour</th></tr></thead><tbody></tbody></table>
<script>
const W = 240, H = 40;
function path(v, max) {
  return v.map((y, i) => `${(i * W / (v.length - 1)).toFixed(1)},${(H - 2 - y / max * (H - 4)).toFixed(1)}`)
          .join(" ");
}
function plot(m) {
  const max = Math.max(1e-9, ...m.export_policy_wh, ...m.export_sent_wh);
  const last = m.export_sent_wh[m.export_sent_wh.length - 1];
  return `<svg width="${W}" height="${H}"><polyline class="pol" points="${path(m.export_policy_wh, max)}"/>` +
         `<polyline class="act" points="${path(m.export_sent_wh, max)}"/>` +
         `<text x="2" y="10" font-size="9">max ${max.toFixed(2)}, now ${last.toFixed(2)} Wh/min</text></svg>`;
}
const ENT = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
function esc(s) { return String(s).replace(/[&<>"]/g, c => ENT[c]); }
async function refresh() {
  let d;
  try { d = await (await fetch("status/data", {cache: "no-store"})).json(); } catch (e) { return; }
  const alerts = document.getElementById("alerts");
  alerts.innerHTML = d.firing.length ? d.firing.map(a =>
      `<li class="firing" data-alert="${esc(a.alert)}" data-site="${esc(a.site_id)}">` +
      `${esc(a.alert)}: ${esc(a.site_id)}</li>`).join("")
    : '<li class="ok">none</li>';
  document.getElementById("meta").textContent =
    `${d.sites.length} sites, ${d.replicas} replica(s), at ${new Date(d.generated_at * 1000).toISOString()}`;
  document.querySelector("#sites tbody").innerHTML = d.sites.map(s => {
    const t = s.totals;
    return `<tr data-site="${esc(s.site_id)}" data-decisions="${t.decisions}">` +
      `<td class="l">${esc(s.site_id)}</td><td class="l mode">${esc(s.mode)}</td>` +
      `<td class="l">${esc(s.model_version)}</td><td>${t.decisions}</td><td>${t.policy_acted}</td>` +
      `<td>${t.differ}</td><td class="${t.violations ? "firing" : ""}">${t.violations}</td>` +
      `<td>${t.export_policy_wh.toFixed(2)}</td><td>${t.export_sent_wh.toFixed(2)}</td>` +
      `<td class="l plot">${plot(s.minutes)}</td></tr>`;
  }).join("");
  document.body.dataset.refreshed = String((+document.body.dataset.refreshed || 0) + 1);
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
