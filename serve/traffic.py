"""Simulated traffic: the export simulator as a site that asks the policy server for its targets each second.

:func:`drive` runs one simulated episode in closed loop over HTTP: each second it posts the env's state
(the ordered vector with its spec version, the meter time, a request id made of the site, the seed and
the step) to ``POST /act``, and applies the targets it gets back. A request that fails is retried with
the same request id (the server's dedupe key); if it still fails, the site does what a real one does
without its server: its local PI decides that second (counted in ``local_fallback``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.actions import to_unit
from envs.controllers import PIController
from envs.export_env import ExportControlEnv, ExportEnvConfig
from envs.state_spec import FEAT, SPEC_VERSION

_AVAIL = [FEAT[f"available_w_l{p}"] for p in (1, 2, 3)]


@dataclass
class TrafficResult:
    """What a simulated site saw."""

    requests: int = 0
    ok: int = 0
    retried: int = 0
    local_fallback: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    time0: float = 0.0
    scenario: str = ""

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "ok": self.ok,
            "retried": self.retried,
            "local_fallback": self.local_fallback,
            "errors": self.errors,
            "sources": self.sources,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 2),
            "time0": self.time0,
            "scenario": self.scenario,
        }


def drive(
    url: str,
    hours: float,
    seed: int = 0,
    site_id: str = "sim-site",
    scenario: str = "broken_clouds",
    start_hour: float | None = 10.0,
    site_path: str | None = None,
    timeout_s: float = 5.0,
    attempts: int = 3,
    progress: bool = False,
) -> TrafficResult:
    """Drive ``hours`` of one simulated site against ``url`` (the server's base URL)."""
    import requests

    n = int(round(hours * 3600))
    cfg = ExportEnvConfig(
        site=site_path,
        scenario=scenario,
        episode_s=n,
        start_s=None if start_hour is None else int(round(start_hour * 3600)),
    )
    env = ExportControlEnv(cfg)
    obs, info = env.reset(seed=seed)
    local_pi = PIController()
    out = TrafficResult(time0=float(env.sim.time0[0]), scenario=info["scenario"])
    act_url = url.rstrip("/") + "/act"
    with requests.Session() as http:
        for k in range(n):
            rid = f"{site_id}-{seed}-{k}"
            body = {
                "state": [float(v) for v in obs],
                "spec_version": SPEC_VERSION,
                "site_id": site_id,
                "request_id": rid,
                "time_s": out.time0 + k,
            }
            answer = None
            for attempt in range(attempts):
                t0 = time.perf_counter()
                try:
                    r = http.post(act_url, json=body, timeout=timeout_s)
                    if r.status_code == 200:
                        answer = r.json()
                        out.latency_ms.append((time.perf_counter() - t0) * 1e3)
                        break
                    if 400 <= r.status_code < 500:  # this request is wrong: retrying will not help
                        out.errors[r.status_code] = r.text[:300]
                        break
                except requests.RequestException:
                    pass
                out.retried += attempt + 1 < attempts
                time.sleep(0.2 * (attempt + 1))
            out.requests += 1
            local = local_pi.act(obs[None, :].astype(np.float64))[0]  # runs every second: bumpless
            if answer is None:
                out.local_fallback += 1
                targets = local
            else:
                out.ok += 1
                out.acknowledged.append(rid)
                out.sources[answer["source"]] = out.sources.get(answer["source"], 0) + 1
                targets = np.asarray(answer["action_w"], np.float64)
                local_pi.u[:] = min(float(targets.sum()), float(obs[_AVAIL].sum()))  # tracks what was sent
            obs, _, _, _, _ = env.step(to_unit(targets, env.max_power_w))
            if progress and (k + 1) % 600 == 0:
                print(f"[traffic] {site_id}: {k + 1}/{n} s", flush=True)
    return out
