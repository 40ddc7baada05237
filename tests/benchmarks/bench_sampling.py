"""Benchmark: the export simulator raw against RLlib sampling and PPO training on it, side by side.

Not a test. Run on a quiet machine (it prints the load average):

    .venv/bin/python tests/benchmarks/bench_sampling.py [--configs rllib_configs/export/ppo_residual.yaml,...]

For each training config (default: ppo.yaml and ppo_residual.yaml, as users run them) and for 1 env and
the config's ``num_envs_per_env_runner``, it measures in one process, one after the other:

* **raw**: the env alone (ExportControlEnv for 1 env, ExportControlVectorEnv for N), zero actions;
* **sample**: RLlib's env runner of the config (its ``env_runner_cls``) sampling ``rollout_fragment_length``
  x N steps per call with the config's RLModule, exploring;
* **sample (RLlib loop)**: RLlib's own SingleAgentEnvRunner on the same env and module, for reference;
* **train**: ``Algorithm.train()`` of the config (sampling and learning, num_env_runners=0) on one local
  Ray, env steps per second of wall time over ``--iters`` iterations after one warm-up iteration.

Rates are steady-state stepping (no episode reset inside the timed part); the reset of a vector env is
timed separately and its amortised cost over the config's ``episode_s`` printed beside (a reset draws a
whole simulated day per member, ~25 ms each). Targets (issue 15), on 2 cores: sample >= 25 % of raw,
judged both against the raw env with its resets (how tests/benchmarks/bench_env.py measured the issue's
137,600 steps/s) and against its stepping alone; PPO training >= 20,000 env steps/s. Torch runs 1 thread
(--torch-threads), as in a `gridrl train` trial. Last line: JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = "rllib_configs/export/ppo.yaml,rllib_configs/export/ppo_residual.yaml"
SAMPLING_TARGET = 0.25
TRAINING_TARGET = 20_000.0


def raw_rate(env_config: dict[str, Any], num_envs: int, seconds: float, seed: int) -> tuple[float, float]:
    """(steps/s of stepping alone, seconds per reset of all ``num_envs`` members), zero actions.

    ExportControlEnv for 1 env, ExportControlVectorEnv for more; resets are timed apart (and excluded)."""
    from envs.export_env import ExportControlEnv, ExportControlVectorEnv

    cfg = {k: v for k, v in env_config.items() if k != "normalization"}
    env = ExportControlEnv(cfg) if num_envs == 1 else ExportControlVectorEnv(num_envs, cfg)
    action = np.zeros(3 if num_envs == 1 else (num_envs, 3), np.float32)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    resets = [time.perf_counter() - t0]
    n, stepping = 0, 0.0
    while stepping < seconds:
        t0 = time.perf_counter()
        for _ in range(100):
            _, _, _, truncated, _ = env.step(action)
            n += num_envs
            if np.any(truncated):
                break
        stepping += time.perf_counter() - t0
        if np.any(truncated):
            t0 = time.perf_counter()
            env.reset()
            resets.append(time.perf_counter() - t0)
    return n / stepping, float(np.mean(resets))


def runner_config(config: Any, num_envs: int, runner_cls: Any | None = None) -> Any:
    c = config.copy(copy_frozen=False)
    c.env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
    if runner_cls is not None:
        c.env_runners(env_runner_cls=runner_cls)
    return c


def sample_rate(config: Any, num_envs: int, seconds: float, runner_cls: Any | None = None) -> float:
    """Env steps/s of one env runner's ``sample()`` (the config's runner class unless given)."""
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    c = runner_config(config, num_envs, runner_cls)
    cls = c.env_runner_cls or SingleAgentEnvRunner
    runner = cls(config=c)
    per_call = max(1, int(c.get_rollout_fragment_length(0))) * num_envs
    runner.sample(num_timesteps=per_call)  # reset, warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += sum(len(e) for e in runner.sample(num_timesteps=per_call))
    rate = n / (time.perf_counter() - t0)
    runner.stop()
    return rate


def train_rate(config: Any, iters: int, runners: int = 0, gpu: bool = False) -> tuple[float, float]:
    """(env steps/s of Algorithm.train() over ``iters`` iterations after a warm-up, steps per iteration),
    with ``runners`` remote env runners (0: sampling in the algorithm's process) and a GPU learner if asked."""
    c = config.copy(copy_frozen=False)
    c.env_runners(num_env_runners=runners)
    if runners:  # every runner samples its share of the batch
        c.training(train_batch_size_per_learner=c.train_batch_size_per_learner * runners)
    c.learners(num_gpus_per_learner=1 if gpu else 0)
    algo = c.build_algo()
    try:
        algo.train()  # warm-up: first reset, torch compile of nothing, metrics set-up

        def steps() -> float:
            return float(algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0.0))

        s0, t0 = steps(), time.perf_counter()
        for _ in range(iters):
            algo.train()
        return (steps() - s0) / (time.perf_counter() - t0), (steps() - s0) / iters
    finally:
        algo.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma-separated YAMLs (default {DEFAULT_CONFIGS})"
    )
    ap.add_argument(
        "--seconds", type=float, default=5.0, help="seconds per raw and sampling figure (default 5)"
    )
    ap.add_argument("--iters", type=int, default=5, help="timed training iterations per config (default 5)")
    ap.add_argument("--num-envs", type=int, default=None, help="envs per runner (default: each config's)")
    ap.add_argument("--skip-train", action="store_true", help="sampling figures only")
    ap.add_argument(
        "--scaling", default=None, metavar="K,K,...",
        help="also train the first config with K remote env runners each (e.g. 1,2,4,8,14; the batch grows "
        "with K) and a GPU learner when CUDA is there: env steps/s per K (the GPU machine's figures)",
    )  # fmt: skip
    ap.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch threads of this process (default 1: what a `gridrl train` trial of 1 CPU gets, Ray sets "
        "its OMP_NUM_THREADS to the trial's CPUs; 2 threads on 2 busy cores ran 10x slower, OpenMP spinning)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import ray
    import torch

    torch.set_num_threads(args.torch_threads)

    from rllib_configs.envs import register_rllib_envs
    from rllib_configs.loader import load_train_config

    load0 = os.getloadavg()
    ray.init(
        num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False, configure_logging=False
    )
    register_rllib_envs()
    rows: list[dict[str, Any]] = []
    for path in [p.strip() for p in args.configs.split(",") if p.strip()]:
        spec = load_train_config(ROOT / path if not Path(path).is_absolute() else path)
        config = spec.algo_config.copy(copy_frozen=False)
        config.debugging(seed=args.seed)
        n_cfg = args.num_envs or config.num_envs_per_env_runner
        env_config = dict(config.env_config)
        episode_s = int(env_config.get("episode_s", 3600))
        for n in sorted({1, n_cfg}):
            raw, reset_s = raw_rate(env_config, n, args.seconds, args.seed)
            c = config.copy(copy_frozen=False)
            c.env_runners(num_envs_per_env_runner=n)
            sample = sample_rate(c, n, args.seconds)
            rllib_loop = sample_rate(c, n, args.seconds, runner_cls=_default_runner())
            row = {
                "config": path, "num_envs": n, "episode_s": episode_s,
                "raw_steps_s": round(raw), "reset_s": round(reset_s, 3),
                "sample_steps_s": round(sample), "rllib_loop_sample_steps_s": round(rllib_loop),
                "sample_over_raw": round(sample / raw, 3),
                "sample_over_raw_with_resets": round(
                    _amortised(sample, reset_s, n, episode_s) / _amortised(raw, reset_s, n, episode_s), 3
                ),
                "sample_over_rllib_loop": round(sample / rllib_loop, 2),
                # steps/s with one reset of the vector per episode_s steps per member
                "raw_with_resets_steps_s": round(_amortised(raw, reset_s, n, episode_s)),
                "sample_with_resets_steps_s": round(_amortised(sample, reset_s, n, episode_s)),
            }  # fmt: skip
            if not args.skip_train:
                c2 = config.copy(copy_frozen=False)
                if n != n_cfg:
                    c2.env_runners(num_envs_per_env_runner=n)
                    c2.training(train_batch_size_per_learner=max(c2.train_batch_size_per_learner // n_cfg, 64),
                                minibatch_size=max(c2.minibatch_size // n_cfg, 32))  # fmt: skip
                train, per_iter = train_rate(c2, args.iters)
                row.update({"train_steps_s": round(train), "steps_per_iter": round(per_iter),
                            "train_over_raw": round(train / raw, 3),
                            "train_with_resets_steps_s": round(_amortised(train, reset_s, n, episode_s))})  # fmt: skip
            rows.append(row)
            print(_line(row), flush=True)
    scaling: list[dict[str, Any]] = []
    if args.scaling:
        path = args.configs.split(",")[0].strip()
        config = load_train_config(ROOT / path).algo_config.copy(copy_frozen=False)
        config.debugging(seed=args.seed)
        gpu = torch.cuda.is_available()
        for k in [int(x) for x in args.scaling.split(",")]:
            rate, per_iter = train_rate(config, args.iters, runners=k, gpu=gpu)
            scaling.append({"config": path, "env_runners": k, "gpu_learner": gpu, "train_steps_s": round(rate),
                            "steps_per_iter": round(per_iter)})  # fmt: skip
            print(f"scaling {Path(path).name} {k:>2d} env runners x{config.num_envs_per_env_runner} envs, "
                  f"{'GPU' if gpu else 'CPU'} learner: {rate:,.0f} env steps/s ({per_iter:,.0f} steps/iter)",
                  flush=True)  # fmt: skip
    load1 = os.getloadavg()
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}; load average before {load0[0]:.2f}, after {load1[0]:.2f}")  # fmt: skip
    for r in rows:
        if r["num_envs"] > 1:
            with_resets = r["sample_with_resets_steps_s"] / r["raw_with_resets_steps_s"]
            print(f"{r['config']} x{r['num_envs']}, {r['episode_s']} s episodes: sampling "
                  f"{with_resets:.1%} of the raw env with its resets (target >= {SAMPLING_TARGET:.0%}: "
                  f"{'met' if with_resets >= SAMPLING_TARGET else 'MISSED'}), {r['sample_over_raw']:.1%} of "
                  f"its stepping alone ({'met' if r['sample_over_raw'] >= SAMPLING_TARGET else 'MISSED'})",
                  end="")  # fmt: skip
            if "train_steps_s" in r:
                ok_t = r["train_steps_s"] >= TRAINING_TARGET
                print(f"; training {r['train_steps_s']:,} env steps/s (target >= {TRAINING_TARGET:,.0f}: "
                      f"{'met' if ok_t else 'MISSED'})", end="")  # fmt: skip
            print()
    print(json.dumps({"rows": rows, "scaling": scaling, "loadavg_1min": [round(load0[0], 2), round(load1[0], 2)],
                      "cpu_count": os.cpu_count()}))  # fmt: skip
    ray.shutdown()


def _default_runner() -> Any:
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    return SingleAgentEnvRunner


def _amortised(rate: float, reset_s: float, n: int, episode_s: int) -> float:
    """Steps/s when every ``episode_s`` steps per member cost one reset of ``reset_s`` seconds."""
    steps = n * episode_s
    return steps / (steps / rate + reset_s)


def _line(r: dict[str, Any]) -> str:
    s = (f"{Path(r['config']).name:18s} x{r['num_envs']:<4d} raw {r['raw_steps_s']:>10,}/s  "
         f"sample {r['sample_steps_s']:>8,}/s ({r['sample_over_raw']:.1%} of raw, "
         f"{r['sample_over_rllib_loop']:.1f}x RLlib's loop {r['rllib_loop_sample_steps_s']:,}/s)")  # fmt: skip
    if "train_steps_s" in r:
        s += f"  train {r['train_steps_s']:>7,}/s ({r['steps_per_iter']:,} steps/iter)"
    return s + f"  reset {r['reset_s']:.2f} s"


if __name__ == "__main__":
    main()
