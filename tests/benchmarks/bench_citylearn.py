"""Benchmark: raw CityLearn env steps/s against RLlib sampled steps/s with 1, 2, ... env runners, same run.

Not a test. Run:

    .venv/bin/python tests/benchmarks/bench_citylearn.py [--schema mall|PATH] [--days 7] [--runners 1,2]

``--schema mall`` (default) builds the Iquitos mall for ``--days`` days in a temporary folder; a path runs
any CityLearn schema (e.g. ../shared/citylearn/citylearn_challenge_2022_phase_all_plus_evs). Measured:

- raw: ``CityLearnRLlibEnv`` stepped with random actions in this process (resets included);
- sample: PPO's env runners each sampling ``--sample-steps`` steps at once, in parallel (the local runner
  does not sample); rate = all steps / wall time of the slowest runner;
- train: one PPO iteration of ``--sample-steps`` x runners steps (sampling + learning), rate = steps / time.

Scaling efficiency = sample rate / (runners x raw rate): 1.0 is linear scaling. Needs one CPU per runner
plus one for the driver to scale at all.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from envs.citylearn.env import ENV_NAME, CityLearnRLlibEnv, register


def raw_rate(env_config: dict, steps: int, seed: int) -> float:
    env = CityLearnRLlibEnv(env_config)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (64, *env.action_space.shape)).astype(np.float32)
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i % 64])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def rllib_rates(env_config: dict, runners: int, sample_steps: int, seed: int) -> dict[str, float]:
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (
        PPOConfig()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=runners, rollout_fragment_length=sample_steps, create_env_on_local_worker=False
        )
        .training(train_batch_size_per_learner=sample_steps * runners, minibatch_size=128, num_epochs=1)
        .rl_module(model_config={"fcnet_hiddens": [64, 64]})
        .debugging(seed=seed)
    )
    t0 = time.perf_counter()
    algo = config.build_algo()
    build_s = time.perf_counter() - t0
    try:
        group = algo.env_runner_group
        group.foreach_env_runner(lambda r: len(r.sample(num_timesteps=16)), local_env_runner=False)  # warm up
        t0 = time.perf_counter()
        done = group.foreach_env_runner(
            lambda r: sum(len(e) for e in r.sample(num_timesteps=sample_steps)), local_env_runner=False
        )
        sample_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        algo.train()
        train_s = time.perf_counter() - t0
    finally:
        algo.stop()
    return {
        "build_s": build_s,
        "sampled_steps": float(sum(done)),
        "sample_steps_per_s": sum(done) / sample_s,
        "train_iteration_steps_per_s": sample_steps * runners / train_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schema", default="mall", help="'mall' (built here) or a CityLearn schema path")
    p.add_argument("--days", type=int, default=7, help="episode length in days (mall build and window)")
    p.add_argument("--runners", default="1,2", help="comma-separated env runner counts")
    p.add_argument("--raw-steps", type=int, default=600, help="steps of the raw env measurement")
    p.add_argument("--sample-steps", type=int, default=400, help="steps each runner samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        if args.schema == "mall":
            from envs.citylearn.schema import build_schema
            from envs.citylearn.site import load_site

            build_schema(load_site(), tmp, days=args.days, seed=args.seed)
            schema = str(Path(tmp) / "schema.json")
        else:
            schema = args.schema
        steps_per_episode = args.days * 24
        env_config = {"schema": schema, "end_time_step": steps_per_episode - 1}
        raw = raw_rate(env_config, args.raw_steps, args.seed)
        print(f"raw env: {raw:.1f} steps/s  ({schema}, {steps_per_episode} steps per episode)", flush=True)
        counts = [int(c) for c in args.runners.split(",")]
        ray.init(
            address="local",  # our own Ray, even if a cluster is running on this machine
            num_cpus=max(max(counts) + 1, 2),
            include_dashboard=False,
            object_store_memory=300 * 1024**2,
            log_to_driver=False,
        )
        register()
        results = {"schema": schema, "cpus": os.cpu_count(), "raw_steps_per_s": raw, "runners": {}}
        try:
            for k in counts:
                r = rllib_rates(env_config, k, args.sample_steps, args.seed)
                r["scaling_efficiency"] = r["sample_steps_per_s"] / (k * raw)
                results["runners"][k] = r
                print(
                    f"{k} env runner(s): sampled {r['sample_steps_per_s']:.1f} steps/s "
                    f"= {r['sample_steps_per_s'] / raw:.2f} x raw "
                    f"(efficiency {r['scaling_efficiency']:.2f}); "
                    f"train iteration {r['train_iteration_steps_per_s']:.1f} steps/s; "
                    f"build {r['build_s']:.1f} s",
                    flush=True,
                )
        finally:
            ray.shutdown()
        if len(counts) > 1:
            a, b = counts[0], counts[-1]
            s = results["runners"][b]["sample_steps_per_s"] / results["runners"][a]["sample_steps_per_s"]
            print(f"{a} -> {b} runners: x{s:.2f} sampled steps/s (linear: x{b / a:.2f})")
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
