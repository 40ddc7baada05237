"""Benchmark: latency of the edge's wrapped decision on one core (issue 8: p99 < 1 ms here, < 10 ms on a Pi).

Not a test. Run:

    .venv/bin/python tests/benchmarks/bench_edge.py --bundle BUNDLE [--n 20000] [--core 0]
    GRIDRL_NO_JIT=1 .venv/bin/python tests/benchmarks/bench_edge.py --bundle BUNDLE  # no numba

The process pins itself to one core (``os.sched_setaffinity``) and onnxruntime runs with one intra-op
thread. States are a simulated hour under the PI (``--seed``), replayed in order. Per decision it times:

- ``decision``: the whole wrapped decision, :meth:`SafetyWrapper.decide` (spec check, anomaly z-scores,
  the fallback PI, normalisation, ONNX, the safety checks) followed by the dispatcher
  (:func:`envs.dispatch.dispatch_row`, per-phase targets -> per-slave commands);
- its parts, timed separately on the same states: ``normalise``, ``onnx`` (session.run on one row),
  ``pi`` (the fallback), ``dispatch``, and ``features`` (the streaming feature kernel, one row).

Prints one JSON object: percentiles in microseconds, the JIT mode, the load average during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def percentiles(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    return {
        "p50_us": round(float(np.percentile(us, 50)), 1),
        "p99_us": round(float(np.percentile(us, 99)), 1),
        "p99.9_us": round(float(np.percentile(us, 99.9)), 1),
        "max_us": round(float(us.max()), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="bundle directory (gridrl export)")
    ap.add_argument("--n", type=int, default=20_000, help="decisions timed (default 20000)")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (default 0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated hour of states")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})

    from envs.dispatch import dispatch_row, slave_table
    from envs.export_env import ExportEnvConfig
    from envs.jit import JIT_ENABLED
    from envs.rollout import make_controller, rollout
    from envs.site import load_site
    from envs.state_spec import N_FEATURES, N_SIGNALS, feature_row, new_kernel_state
    from serve.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    site = load_site(None)
    bundle.check_site(site)
    trace = rollout(
        make_controller("pi", 7500),
        ExportEnvConfig(scenario="broken_clouds", episode_s=3600, start_s=39600),
        seed=args.seed,
    )
    states = trace.obs[:-1].astype(np.float64)
    params = slave_table(site)
    n_s = params.shape[0]
    avail, is_on, tis, cmd = np.ones(n_s), np.zeros(n_s), np.full(n_s, 1e6), np.zeros(n_s)
    wrapper = bundle.make_wrapper(threads=1)
    clock = time.perf_counter_ns

    def timed(fn, n: int) -> np.ndarray:
        out = np.empty(n, np.int64)
        for i in range(n):
            t0 = clock()
            fn(i)
            out[i] = clock() - t0
        return out

    def decision(i: int) -> None:
        d = wrapper.decide(states[i % len(states)])
        dispatch_row(d.action_w, avail, is_on, tis, params, cmd)

    timed(decision, 2000)  # warm-up: compiled kernels, onnxruntime's first runs
    load0 = os.getloadavg()[0]
    results = {"decision": percentiles(timed(decision, args.n))}
    sources = {}
    for i in range(1000):
        s = wrapper.decide(states[i]).source
        sources[s] = sources.get(s, 0) + 1
    norm = bundle.normalizer
    results["normalise"] = percentiles(timed(lambda i: norm(states[i % len(states)][None]), args.n))
    if bundle.controller == "onnx":
        policy = bundle.make_policy(threads=1)
        z = norm(states)
        results["onnx"] = percentiles(timed(lambda i: policy.run_normalised(z[i % len(z)][None]), args.n))
    pi = make_controller("pi", 7500)
    results["pi"] = percentiles(timed(lambda i: pi.act(states[i % len(states)][None]), args.n))
    targets = np.abs(states[:, 14:17])
    results["dispatch"] = percentiles(
        timed(lambda i: dispatch_row(targets[i % len(targets)], avail, is_on, tis, params, cmd), args.n)
    )
    sig = np.zeros(N_SIGNALS)
    sig[3:6] = 2000.0
    kstate, ring = new_kernel_state(1, 48.1, 15.0)
    feat = np.zeros(N_FEATURES)

    def features(i: int) -> None:
        sig[0:3] = states[i % len(states), 0:3]
        sig[16] = 1.75e9 + i
        feature_row(sig, kstate[0], ring[0], feat)

    results["features"] = percentiles(timed(features, args.n))
    print(
        json.dumps(
            {
                "bundle": str(args.bundle),
                "controller": bundle.controller,
                "algorithm": bundle.manifest["algorithm"],
                "jit": JIT_ENABLED,
                "core": args.core,
                "n": args.n,
                "sources_first_1000": sources,
                "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                "ncpu": os.cpu_count(),
                **results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
