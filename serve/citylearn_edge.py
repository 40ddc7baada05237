"""The edge runtime for CityLearn bundles: the bundle behind the CityLearn safety wrapper, step by step.

:class:`CityLearnEdgeController` is what a site's box runs (numpy and onnxruntime alone: no Ray, no torch,
no CityLearn): each step it takes the raw central observation vector (the readings CityLearn's
``env.observations[0]`` holds, in the bundle's ``observation.names`` order), asks the
:class:`~serve.citylearn_safety.CityLearnSafetyWrapper` for the action (the bundle's policy, the RBC
fallback, the device checks) and appends one JSON line to the decision log.

:func:`run_citylearn_simulated` (``gridrl edge --bundle B`` when B is a CityLearn bundle) drives it with
the CityLearn simulator instead of a site, as the export domain's edge runs on the export simulator: one
episode of ``days`` days from ``start_step`` on the bundle's schema (or another with the same
observations), reward weights and scales from the bundle's manifest. It writes ``DIR/metrics.json``
(``{bundle name: {kpi: value}}``, envs/citylearn/kpis.py, with ``limit_violations`` counted on what the
simulator did), ``DIR/checks.json`` (how often each check fired and each source acted) and
``DIR/decisions.jsonl``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from serve.citylearn_bundle import CityLearnBundle, load_citylearn_bundle
from serve.safety import Decision


class CityLearnEdgeController:
    """One site's control step around a CityLearn bundle (module docstring).

    Args:
        bundle: A loaded bundle (:func:`serve.citylearn_bundle.load_citylearn_bundle`).
        log: Optional open text file for the decision log (one JSON line per decision).
        timer: Wall clock for the policy deadline (tests pass a fake).
    """

    def __init__(self, bundle: CityLearnBundle, log: Any = None, timer: Any = time.perf_counter):
        self.bundle, self.log = bundle, log
        self.now = 0.0
        self.wrapper = bundle.make_wrapper(clock=lambda: self.now, timer=timer)

    def step(self, raw: np.ndarray, time_s: float) -> Decision:
        """The action for the raw observation read at ``time_s`` (s: the wrapper's fallback clock)."""
        self.now = float(time_s)
        decision = self.wrapper.decide(raw)
        if self.log is not None:
            self.log.write(
                json.dumps(
                    {
                        "time_s": self.now,
                        "source": decision.source,
                        "checks": list(decision.checks_fired),
                        "action": [round(float(v), 6) for v in decision.action_w],
                        "policy_ms": round(decision.policy_s * 1e3, 3),
                        "fallback_until": decision.fallback_until
                        if np.isfinite(decision.fallback_until)
                        else None,
                    }
                )
                + "\n"
            )
        return decision


def run_citylearn_simulated(
    bundle_path: str | Path,
    out: str | Path,
    schema: str | None = None,
    start_step: int | None = None,
    days: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float | None]]:
    """Run a CityLearn bundle under the edge loop on one simulated episode (module docstring).

    Raises:
        BundleError: The bundle does not verify.
        ValueError: The schema's observations or actions are not the bundle's, or the window does not fit.
    """
    from envs.citylearn.env import CityLearnRLlibEnv
    from envs.citylearn.kpis import episode_kpis

    bundle = load_citylearn_bundle(bundle_path)
    m = bundle.manifest
    reward = {k: v for k, v in (m.get("reward") or {}).items() if k != "function"}
    first = int(m["observation"]["window"][0]) if start_step is None else int(start_step)
    steps_per_day = int(round(24 / bundle.devices.step_hours))
    config = {
        "schema": schema or m["observation"]["schema"],
        "start_time_step": first,
        "end_time_step": first + days * steps_per_day - 1,
        "reward_kwargs": reward if m["reward"]["function"].endswith("MultiObjectiveReward") else {},
        "action_mode": "direct",
    }
    t0 = time.perf_counter()
    env = CityLearnRLlibEnv(config)
    if list(env.citylearn.observation_names[0]) != m["observation"]["names"]:
        raise ValueError(f"{config['schema']}: its raw observations differ from bundle {bundle.path}'s")
    if list(env.action_names) != bundle.action_names:
        raise ValueError(f"{config['schema']}: its actions differ from bundle {bundle.path}'s")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources: dict[str, int] = {}
    checks: dict[str, int] = {}
    seconds = float(env.citylearn.seconds_per_time_step)
    with open(out / "decisions.jsonl", "w", encoding="utf-8") as log:
        edge = CityLearnEdgeController(bundle, log)
        env.reset(seed=seed)
        ret, done, k = 0.0, False, 0
        while not done:
            raw = np.asarray(env.citylearn.observations[0], dtype=np.float64)
            d = edge.step(raw, (first + k) * seconds)
            sources[d.source] = sources.get(d.source, 0) + 1
            for c in d.checks_fired:
                checks[c] = checks.get(c, 0) + 1
            _, reward_k, terminated, truncated, _ = env.step(d.action_w.astype(np.float32))
            ret += reward_k
            k += 1
            done = terminated or truncated
    kpis = episode_kpis(env.citylearn)
    kpis["episode_return"] = ret
    results = {bundle.name: {k: (float(v) if np.isfinite(v) else None) for k, v in kpis.items()}}
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    (out / "checks.json").write_text(
        json.dumps({"decisions": k, "sources": sources, "checks_fired": checks}, indent=2)
    )
    if progress:
        print(
            f"[edge] {bundle.name} on {config['schema']} steps {first}-{config['end_time_step']}: {k} "
            f"decisions in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return results
