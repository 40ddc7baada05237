"""The one training runner: every ``gridrl train`` goes through here, whatever the algorithm.

It runs the algorithm as a Tune trainable, so checkpoints, TensorBoard logs, resume and fault tolerance
come from Ray. One set of options (:class:`RunOptions`) serves every algorithm; a config file holds only
what differs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
    LEARNER_RESULTS,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)

from envs.config import lookup
from rllib_configs import storage
from rllib_configs.loader import TrainSpec
from rllib_configs.policy import write_run_info

TRAINING_ITERATION = "training_iteration"  # Tune's key (ray.tune.result.TRAINING_ITERATION)
TIME_TOTAL_S = "time_total_s"


@dataclass
class RunOptions:
    """Options shared by every training entry point (``gridrl train``, the pipeline, Tune sweeps)."""

    storage_path: Path
    """Root of all outputs; on a cluster, storage every node can reach."""
    seed: int = 0
    stop_iters: int | None = None
    stop_timesteps: int | None = None
    time_budget_s: float | None = None
    num_env_runners: int | None = None
    """Override of env_runners.num_env_runners."""
    checkpoint_every: int = 1
    """Checkpoint every N iterations (and always at the end)."""
    resume: bool = False
    """Continue the latest run of this config under storage_path from its last checkpoint."""
    name: str | None = None
    """Experiment name (default: the config file's stem)."""
    max_failures: int = 0
    """Trial restarts from the last checkpoint after a crash."""
    num_learners: int | None = None
    """Override of learners.num_learners (remote learner actors; 0 = in the algorithm's process)."""
    num_gpus_per_learner: float | None = None
    """Override of learners.num_gpus_per_learner: set it where the driver (e.g. a CPU-only head under
    `ray job submit`) sees no GPU but the cluster's learner nodes have one."""
    init_from: str | None = None
    """Initialise the policy from this checkpoint or run directory (overrides gridrl.init_from)."""
    mlflow: str | None = None
    """MLflow tracking URI (``--mlflow``, resolved by rllib_configs.tracking.resolve); None: no MLflow. A
    resumed run keeps the tracking it started with (Tune restores its callbacks)."""

    def stop(
        self, timesteps_key: str = f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}"
    ) -> dict[str, float]:
        """Tune's stop criteria; ``--stop-timesteps`` counts ``timesteps_key`` (env steps sampled, or the
        forward model's training windows)."""
        stop: dict[str, float] = {}
        if self.stop_iters is not None:
            stop[TRAINING_ITERATION] = self.stop_iters
        if self.stop_timesteps is not None:
            stop[timesteps_key] = self.stop_timesteps
        if self.time_budget_s is not None:
            stop[TIME_TOTAL_S] = self.time_budget_s
        if not stop:
            stop[TRAINING_ITERATION] = 10
        return stop


def summary_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The metrics a summary line reports, by RLlib's metric names, flattened with '/'."""
    keys = [
        TRAINING_ITERATION,
        TIME_TOTAL_S,
        f"{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}",
        f"{ENV_RUNNER_RESULTS}/reward_per_step_mean",  # rllib_configs/vector_runner.py: every iteration has it
        f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}",
        f"{EVALUATION_RESULTS}/{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}",
    ]
    out = {k: v for k in keys if (v := lookup(result, k, "/")) is not None}
    learners = result.get(LEARNER_RESULTS, {}) or {}
    for module_id, stats in learners.items():
        if isinstance(stats, dict):
            for k, v in stats.items():
                if k.endswith("loss") and isinstance(v, (int, float)):
                    out[f"{LEARNER_RESULTS}/{module_id}/{k}"] = v
    return out


def configure(spec: TrainSpec, opts: RunOptions) -> Any:
    """The AlgorithmConfig to run: the file's config plus the run options (seed, runners, GPU). gridrl's env
    names are registered with Tune here, so the config builds (``config.build_algo()``) wherever it is made."""
    import torch

    from rllib_configs.envs import register_rllib_envs

    register_rllib_envs()
    config = spec.algo_config.copy(copy_frozen=False)
    config.debugging(seed=opts.seed)
    if opts.num_env_runners is not None:
        config.env_runners(num_env_runners=opts.num_env_runners)
    if opts.num_learners is not None:
        config.learners(num_learners=opts.num_learners)
    if opts.num_gpus_per_learner is not None:
        config.learners(num_gpus_per_learner=opts.num_gpus_per_learner)
    elif torch.cuda.is_available() and "num_gpus_per_learner" not in spec.raw.get("learners", {}):
        config.learners(num_gpus_per_learner=1)
    init_from = opts.init_from or spec.settings.init_from
    if init_from:
        import functools

        from rllib_configs.offline import init_policy_from_checkpoint

        config.callbacks(on_algorithm_init=functools.partial(init_policy_from_checkpoint, checkpoint=str(init_from)))
    return config


def experiment_dir(spec: TrainSpec, opts: RunOptions) -> str:
    """The run's directory: a local absolute path or a storage URI (rllib_configs/storage.py)."""
    return storage.join(opts.storage_path, opts.name or spec.path.stem)


def run_info(spec: TrainSpec, config: Any, opts: RunOptions) -> dict[str, Any]:
    """What evaluation and export need to know about a run (written as gridrl_run.json)."""
    from envs.normalization import ObsNormalizer

    env_config = dict(config.env_config or {})
    norm = env_config.get("normalization")
    return {
        "algorithm": spec.algorithm,
        "domain": spec.settings.domain,
        "config": str(spec.path.resolve()),
        "config_yaml": spec.raw,
        "env": config.env if isinstance(config.env, str) else None,
        "env_config": env_config,
        "normalization": ObsNormalizer.load(norm).to_dict() if norm else None,
        "seed": opts.seed,
    }


def progress_callback() -> Any:
    """A Tune callback printing one progress line per training iteration on stderr (every trainable's)."""
    from ray import tune

    class Progress(tune.Callback):
        """One line per training iteration on stderr."""

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: D102
            m = summary_metrics(result)
            parts = [f"iter {m.get(TRAINING_ITERATION)}", f"{m.get(TIME_TOTAL_S, 0):.0f} s"]
            ret = m.get(f"{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}",
                        m.get(f"{EVALUATION_RESULTS}/{ENV_RUNNER_RESULTS}/{EPISODE_RETURN_MEAN}"))
            steps = m.get(f"{ENV_RUNNER_RESULTS}/{NUM_ENV_STEPS_SAMPLED_LIFETIME}")
            if steps is not None:
                parts.append(f"env steps {int(steps)}")
            if ret is not None and ret == ret:  # RLlib reports NaN in an iteration where no episode ended
                parts.append(f"return {ret:.3f}")
            if (per_step := m.get(f"{ENV_RUNNER_RESULTS}/reward_per_step_mean")) is not None:
                parts.append(f"reward/step {per_step:.4f}")
            parts += [f"{k.split('/')[-1]} {v:.4g}" for k, v in m.items() if k.startswith(LEARNER_RESULTS)][:3]
            print(f"[train] {trial.trial_id}: " + ", ".join(parts), file=sys.stderr, flush=True)

    return Progress()


def run_training(spec: TrainSpec, opts: RunOptions) -> dict[str, Any]:
    """Train through Tune; returns the summary (checkpoint path, final metrics, trial dir).

    An RLlib algorithm runs as its Algorithm class; ``algorithm: forward_model`` as the function trainable
    of rllib_configs/forward_model.py (same options, same summary, plus its validation metrics).
    """
    from ray import tune

    # Tune records each trial's latest checkpoint in its experiment state, saved by default at most every
    # 10 s: a driver killed in between resumes from an older checkpoint (or from scratch). One trial's state
    # is small, so save it after every event unless the user chose a period.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    extra_metrics: tuple[str, ...] = ()
    if spec.algorithm == "FORWARD_MODEL":
        from rllib_configs import forward_model

        trainable, param_space, info = forward_model.tune_parts(spec, opts)
        stop = param_space["stop"]  # opts.stop(SAMPLES_KEY): the trainable reads it too
        checkpoints = tune.CheckpointConfig(num_to_keep=3)  # the trainable checkpoints itself
        extra_metrics = forward_model.SUMMARY_METRICS
    else:
        param_space = configure(spec, opts)
        trainable, info, stop = param_space.algo_class, None, opts.stop()  # info: written for a new run only
        checkpoints = tune.CheckpointConfig(
            checkpoint_frequency=opts.checkpoint_every, checkpoint_at_end=True, num_to_keep=3
        )
    exp_dir = experiment_dir(spec, opts)
    t0 = time.perf_counter()
    if opts.resume:
        if not tune.Tuner.can_restore(exp_dir):
            raise FileNotFoundError(f"--resume: no run to resume at {exp_dir}")
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True, param_space=param_space)
    else:
        if storage.exists(exp_dir):
            raise FileExistsError(f"{exp_dir} exists: pass --resume to continue it, or --name for a new run")
        from rllib_configs.tracking import mlflow_callbacks

        parent, name = storage.parent_and_name(exp_dir)
        run_config = tune.RunConfig(
            name=name,
            storage_path=parent,
            stop=stop,
            checkpoint_config=checkpoints,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            callbacks=[progress_callback(), *mlflow_callbacks(opts.mlflow, name, {"config": str(spec.path)})],
            verbose=0,
        )
        write_run_info(exp_dir, info if info is not None else run_info(spec, param_space, opts))
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config)
    grid = tuner.fit()
    result = grid[0]
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    metrics = result.metrics or {}
    return {
        "checkpoint": result.checkpoint.path,
        "algorithm": spec.algorithm,
        "config": str(spec.path),
        "domain": spec.settings.domain,
        "seed": opts.seed,
        "trial_dir": result.path,
        "wall_s": round(time.perf_counter() - t0, 1),
        "metrics": {**summary_metrics(metrics), **{k: metrics[k] for k in extra_metrics if k in metrics}},
    }


def print_summary(summary: dict[str, Any]) -> None:
    """The last line of a command: one JSON object, for scripts to chain on.

    Ray streams its workers' log lines to the driver asynchronously, so they can arrive after anything the
    driver prints; shutting Ray down first flushes them, and the JSON line really is the last one.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    sys.stderr.flush()
    print(json.dumps(summary, default=str), flush=True)
