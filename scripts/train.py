"""``gridrl train``: train any algorithm from its YAML config, through Tune."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.flags import SEED, add_mlflow, add_ray, float_in, int_at_least  # range-checked (issue 21)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train an RLlib algorithm from a YAML config (rllib_configs/...)",
        description=(
            "Train through Ray Tune (checkpoints, TensorBoard logs, resume). Progress goes to stderr, one "
            "line per iteration; the last line on stdout is a JSON summary with 'checkpoint' and the "
            "final metrics. Under `ray job submit` it joins that cluster; otherwise it starts a local Ray."
        ),
    )
    p.add_argument("--config", required=True, help="training YAML, e.g. rllib_configs/export/ppo.yaml")
    stop = p.add_argument_group("stop criteria (first reached wins; default 10 iterations)")
    stop.add_argument("--stop-iters", type=int_at_least(1), default=None, help="training iterations")
    stop.add_argument("--stop-timesteps", type=int_at_least(1), default=None, help="sampled env steps")
    stop.add_argument("--time-budget", type=float_in(0, lo_open=True), default=None, metavar="S", help="wall-clock seconds")
    p.add_argument("--seed", type=SEED, default=0, help="seed of envs, networks and sampling")
    p.add_argument("--storage-path", default="runs", help="root of checkpoints and logs (default ./runs)")
    p.add_argument("--name", default=None, help="experiment name (default: the config file's stem)")
    p.add_argument("--dataset", default=None, help="dataset directory from `gridrl data build` (offline configs)")
    p.add_argument("--model", default=None, help="forward-model checkpoint or run dir, for ${model} (model-env configs)")
    p.add_argument("--init-from", default=None, help="initialise the policy from this checkpoint or run dir (CQL from BC)")
    p.add_argument("--num-env-runners", type=int_at_least(0), default=None, help="override env_runners.num_env_runners")
    p.add_argument("--num-learners", type=int_at_least(0), default=None, help="override learners.num_learners")
    p.add_argument("--num-gpus-per-learner", type=float_in(0), default=None,
                   help="override learners.num_gpus_per_learner (default: 1 if this process sees a GPU)")
    p.add_argument("--checkpoint-every", type=int_at_least(1), default=1, help="checkpoint every N iterations (default 1)")
    p.add_argument("--resume", action="store_true", help="continue the run --name under --storage-path")
    p.add_argument("--eval-only", action="store_true", help="only evaluate the run's last checkpoint against the PI")
    p.add_argument("--max-failures", type=int_at_least(0), default=0, help="restart a crashed trial from its checkpoint N times")
    add_mlflow(p)
    add_ray(p)
    return p


def run(args: argparse.Namespace) -> int:
    from cluster.local import init_ray
    from envs.config import ConfigError
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, experiment_dir, print_summary, run_training
    from rllib_configs.tracking import TrackingError, resolve

    try:
        spec = load_train_config(args.config, dataset=args.dataset, model=args.model)
        mlflow = resolve(args.mlflow, args.storage_path)
    except (ConfigError, TrackingError) as exc:
        print(f"gridrl train: {exc}", file=sys.stderr)
        return 2
    opts = RunOptions(
        storage_path=Path(args.storage_path), seed=args.seed, stop_iters=args.stop_iters,
        stop_timesteps=args.stop_timesteps, time_budget_s=args.time_budget, num_env_runners=args.num_env_runners,
        checkpoint_every=args.checkpoint_every, resume=args.resume, name=args.name, max_failures=args.max_failures,
        init_from=args.init_from, num_learners=args.num_learners, num_gpus_per_learner=args.num_gpus_per_learner,
        mlflow=mlflow,
    )
    init_ray(args.address, num_cpus=args.num_cpus)
    if args.eval_only:
        from scripts.evaluate import evaluate_run

        return evaluate_run(spec, Path(experiment_dir(spec, opts)), seed=args.seed)
    try:
        summary = run_training(spec, opts)
    except (FileExistsError, FileNotFoundError) as exc:
        print(f"gridrl train: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0
