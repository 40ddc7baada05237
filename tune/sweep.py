"""Run a sweep through Ray Tune: param space, resources, scheduler, resume.

Resources: every trial asks for what RLlib's ``default_resource_request`` says its config needs (main
process, learners, env runners). Before anything is scheduled the sweep checks that one trial fits the
cluster and caps the concurrency so trials never wait forever for CPUs that will not come. Offline
algorithms read their dataset with Ray Data tasks that run *outside* the trial's placement group (Ray Data
gives its tasks the SPREAD strategy, so Tune's capture of child tasks does not apply to them): the sweep
keeps ``DATA_CPUS`` CPUs free for them. The cap is handed to the search generator itself, because Tune
ignores ``max_concurrent_trials`` when a ``SearchGenerator`` is passed as ``search_alg``
(ray-project/ray#36080): with the cap ignored, a BC sweep on 2 CPUs started two trials, which took both
CPUs, and Ray Data's ``ListFiles`` task waited for a CPU for ever.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rllib_configs.algorithms import OFFLINE_ALGORITHMS
from rllib_configs.runner import RunOptions, configure, run_info
from rllib_configs.policy import write_run_info
from tune.spec import SweepSpec

DATA_CPUS = 1  # CPUs kept free for Ray Data readers in offline sweeps


@dataclass
class SweepOptions:
    storage_path: Path
    num_samples: int
    max_concurrent: int | None = None
    seed: int = 0
    resume: bool = False
    name: str | None = None
    address: str | None = None
    """The cluster address gridrl joined (None: an embedded local Ray it sized itself)."""
    mlflow: str | None = None
    """MLflow tracking URI (``--mlflow``, resolved by rllib_configs.tracking.resolve); None: no MLflow."""


def experiment_dir(spec: SweepSpec, opts: SweepOptions) -> Path:
    return Path(opts.storage_path).resolve() / (opts.name or f"sweep-{spec.domain}-{spec.path.stem}")


def _attribute(config: Any, method: str, name: str, dist: Any) -> str:
    """The key of ``config.to_dict()`` that ``config.<method>(<name>=...)`` sets (found by probing)."""
    before = config.to_dict()
    for _ in range(8):
        value = dist.categories[0] if hasattr(dist, "categories") else dist.sample()
        probe = config.copy(copy_frozen=False)
        getattr(probe, method)(**{name: value})
        changed = [k for k, v in probe.to_dict().items() if k not in before or before[k] != v]
        if len(changed) == 1:
            return changed[0]
    raise ValueError(f"cannot tell which config entry {method}.{name} sets")


def param_space(spec: SweepSpec, seed: int) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(AlgorithmConfig, Tune param space dict with the distributions, {attr: 'method.name'})."""
    config = configure(spec.train, RunOptions(storage_path=Path("."), seed=seed))
    space = config.to_dict()
    names = {}
    for (method, name), dist in spec.space.items():
        attr = _attribute(config, method, name, dist)
        space[attr] = dist
        names[attr] = f"{method}.{name}"
    return config, space, names


def trial_cpus(config: Any) -> float:
    """CPUs one trial reserves (all bundles of RLlib's resource request)."""
    pgf = config.algo_class.default_resource_request(config)
    return float(sum(b.get("CPU", 0) for b in pgf.bundles))


def concurrency(spec: SweepSpec, config: Any, cluster_cpus: float, requested: int | None, joined: bool = False) -> int:
    """How many trials may run at once without starving each other (or Ray Data) of CPUs.

    On a cluster gridrl joined (which may autoscale), the CPUs present now say nothing of what will come:
    there it trusts ``requested`` (or leaves concurrency to Tune) and never refuses to start.
    """
    need = trial_cpus(config)
    if joined:
        return requested or 0
    reserve = DATA_CPUS if spec.algorithm in OFFLINE_ALGORITHMS else 0
    fits = int(math.floor((cluster_cpus - reserve) / need)) if need > 0 else 1
    if fits < 1:
        raise RuntimeError(
            f"one {spec.algorithm} trial needs {need:g} CPUs{' plus ' + str(reserve) + ' for Ray Data' if reserve else ''}, "
            f"the cluster has {cluster_cpus:g}: lower overrides.env_runners.num_env_runners in {spec.path}"
        )
    return max(1, min(fits, requested)) if requested else fits


def scheduler(spec: SweepSpec, space: dict[str, Any], names: dict[str, str]) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = spec.file.scheduler
    max_t = int(spec.file.stop.get("training_iteration", 100))
    if s.type == "fifo":
        return FIFOScheduler()
    if s.type == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
            hyperparam_mutations={attr: space[attr] for attr in names},
        )
    # ASHA refuses a grace period longer than the budget (AssertionError), as `gridrl tune --stop-iters 1` on
    # a file with grace_period 2 would ask: cap it at the budget.
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(s.grace_period, max_t),
                         reduction_factor=s.reduction_factor)


def run_sweep(spec: SweepSpec, opts: SweepOptions) -> Any:
    """Run (or resume) the sweep; returns (ResultGrid, experiment dir)."""
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from rllib_configs.envs import register_rllib_envs

    register_rllib_envs()
    # Record finished trials in the experiment state at once, so a killed driver never reruns them.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    config, space, names = param_space(spec, opts.seed)
    trainable = config.algo_class
    exp_dir = experiment_dir(spec, opts)
    if opts.resume:
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise FileNotFoundError(f"--resume: no sweep to resume at {exp_dir}")
        # The same param_space again: Tune saved it with placeholders for its non-primitive values (RLlib's
        # classes and functions: callbacks, sample_collector, policy_mapping_fn, ...), and the trials that the
        # capped generator had not created yet when the driver died are created from it now.
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, param_space=space,
                                   resume_unfinished=True, resume_errored=True)
        return tuner.fit(), exp_dir
    if exp_dir.exists():
        raise FileExistsError(f"{exp_dir} exists: pass --resume to continue it, or --name for a new sweep")
    cpus = float(ray.cluster_resources().get("CPU", 0))
    joined = bool(opts.address or os.environ.get("RAY_ADDRESS"))
    max_concurrent = concurrency(spec, config, cpus, opts.max_concurrent or spec.file.max_concurrent, joined)
    print(f"[tune] {spec.algorithm} sweep: {opts.num_samples} samples, {trial_cpus(config):g} CPU/trial, "
          f"{max_concurrent or 'as many as fit'} at a time on {cpus:g} CPUs, scheduler {spec.file.scheduler.type}", file=sys.stderr)
    write_run_info(exp_dir, {**run_info(spec.train, config, RunOptions(storage_path=exp_dir, seed=opts.seed)),
                             "sweep": str(spec.path.resolve()), "search_space": names})
    stop_iters = int(spec.file.stop.get("training_iteration", 0)) or None
    from rllib_configs.tracking import mlflow_callbacks

    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=spec.file.metric, mode=spec.file.mode, num_samples=opts.num_samples,
            scheduler=scheduler(spec, space, names),
            # The cap goes to the generator itself, not to TuneConfig(max_concurrent_trials=...): Tune
            # applies that only by wrapping a ``Searcher`` in a ConcurrencyLimiter and, given a
            # ``SearchGenerator`` such as this one, ignores it with a log warning (ray-project/ray#36080),
            # so every trial that fitted started. Offline sweeps on 2 CPUs then ran two trials on both CPUs,
            # and Ray Data's ListFiles task (outside the trials' placement groups, 1 CPU) stayed pending for
            # ever: the "hanging" BC sweep.
            search_alg=BasicVariantGenerator(random_state=opts.seed, max_concurrent=max_concurrent or 0),
        ),
        run_config=tune.RunConfig(
            name=exp_dir.name, storage_path=str(exp_dir.parent), stop=dict(spec.file.stop),
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=max(1, (stop_iters or 2) // 2), checkpoint_at_end=True, num_to_keep=2,
                checkpoint_score_attribute=spec.file.metric, checkpoint_score_order=spec.file.mode,
            ),
            callbacks=mlflow_callbacks(opts.mlflow, exp_dir.name, {"sweep": str(spec.path)}),
            verbose=1,
        ),
    )
    return tuner.fit(), exp_dir
