"""Benchmark: export env steps/s, single and vectorised, against gymnasium's Pendulum-v1 in the same run.

Not a test. Run: .venv/bin/python tests/benchmarks/bench_env.py [--seconds 3] [--num-envs 1024]
Targets (issue 2): single env >= 0.5 x Pendulum's steps/s; vectorised >= 100k steps/s.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
from envs.export_env import ExportControlVectorEnv


def rate_single(env_id: str, seconds: float, **kwargs) -> float:
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    action = env.action_space.sample() * 0
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            _, _, term, trunc, _ = env.step(action)
            if term or trunc:
                env.reset()
        n += 1000
    return n / (time.perf_counter() - t0)


def rate_vector(num_envs: int, episode_s: int, episodes: int) -> tuple[float, float]:
    """(steps/s over whole episodes including resets, steps/s of stepping alone)."""
    venv = ExportControlVectorEnv(num_envs, {"episode_s": episode_s, "scenario": "broken_clouds"})
    action = np.zeros((num_envs, 3), np.float32)
    stepping = 0.0
    t0 = time.perf_counter()
    for _ in range(episodes):
        venv.reset()
        t1 = time.perf_counter()
        for _ in range(episode_s):
            venv.step(action)
        stepping += time.perf_counter() - t1
    total = time.perf_counter() - t0
    n = episodes * episode_s * num_envs
    return n / total, n / stepping


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--num-envs", type=int, default=256)
    ap.add_argument("--episode-s", type=int, default=3600, help="vectorised episode length (s)")
    ap.add_argument("--episodes", type=int, default=2)
    args = ap.parse_args()
    rate_single(envs.ENV_ID, 0.5, config={"episode_s": 3600})  # warm-up / compile
    pend = rate_single("Pendulum-v1", args.seconds)
    ours = rate_single(envs.ENV_ID, args.seconds, config={"episode_s": 3600})
    rate_vector(2, 60, 1)  # compile
    vec, vec_steps = rate_vector(args.num_envs, args.episode_s, args.episodes)
    print(f"Pendulum-v1 (gym.make)            {pend:12,.0f} steps/s")
    print(f"{envs.ENV_ID} (gym.make)   {ours:12,.0f} steps/s   ratio to Pendulum {ours / pend:.2f} (target >= 0.5)")
    print(
        f"vectorised x{args.num_envs} ({args.episode_s} s episodes, resets included) {vec:12,.0f} steps/s"
        f"   ratio to Pendulum {vec / pend:.1f} (target >= 100k steps/s)"
    )
    print(f"vectorised x{args.num_envs}, stepping alone (no resets)          {vec_steps:12,.0f} steps/s")


if __name__ == "__main__":
    main()
