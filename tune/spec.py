"""Sweep files: ``tune/<domain>/<algo>.yaml`` -> a checked :class:`SweepSpec`.

A sweep file::

    base: rllib_configs/export/ppo.yaml        # the training config the trials start from
    metric: env_runners/episode_return_mean    # RLlib's metric name (ray.rllib.utils.metrics)
    mode: max
    search_space:                              # "<builder method>.<keyword>" -> a distribution
      training.lr: {loguniform: [1.0e-5, 1.0e-3]}
      training.gamma: {uniform: [0.95, 0.995]}
      training.num_epochs: {choice: [4, 8]}
      training.train_batch_size_per_learner: {qrandint: [1200, 4800, 1200]}
    scheduler: {type: asha, grace_period: 2, reduction_factor: 3}   # asha (default) | fifo | pbt
    stop: {training_iteration: 10}
    overrides:                                 # builder calls applied to every trial (e.g. resources)
      env_runners: {num_env_runners: 0}

Every key is checked at load time: the base must load (rllib_configs/loader.py), each search key must be a
real builder keyword, each distribution well formed; errors name the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envs.config import ConfigError, from_mapping, load_yaml

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "qrandint", "randint", "quniform", "grid_search")


@dataclass(frozen=True)
class SchedulerSpec:
    """Trial scheduler."""

    type: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: int = 1
    """ASHA: iterations every trial runs before it can be stopped."""
    reduction_factor: float = 3.0
    """ASHA: keep the top 1/reduction_factor at each rung."""
    perturbation_interval: int = 2
    """PBT: iterations between exploit/explore steps."""


@dataclass(frozen=True)
class SweepFile:
    """The YAML fields of a sweep (see the module docstring)."""

    base: str
    metric: str
    mode: Literal["max", "min"]
    search_space: dict[str, dict[str, Any]]
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    stop: dict[str, float] = field(default_factory=lambda: {"training_iteration": 10})
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    num_samples: int = 50
    """Default --num-samples."""
    max_concurrent: int | None = None
    """Default --max-concurrent (None: as many as the cluster's CPUs allow)."""


@dataclass
class SweepSpec:
    """A loaded sweep: the file's fields, the loaded base training config, and the distributions."""

    path: Path
    file: SweepFile
    train: Any  # rllib_configs.loader.TrainSpec
    space: dict[tuple[str, str], Any]  # (builder method, keyword) -> ray.tune distribution

    @property
    def domain(self) -> str:
        return self.train.settings.domain

    @property
    def algorithm(self) -> str:
        return self.train.algorithm


def distribution(entry: Any, source: Path, key: str) -> Any:
    """``{loguniform: [lo, hi]}`` etc. -> the ray.tune sampler; ConfigError naming ``key`` otherwise."""
    from ray import tune

    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(source, f"search_space.{key}", f"expected one of {{{', '.join(DISTRIBUTIONS)}: [...]}}")
    (kind, args), = entry.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(source, f"search_space.{key}.{kind}", f"unknown distribution (known: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise ConfigError(source, f"search_space.{key}.{kind}", "expected a non-empty list of arguments")
    if kind in ("choice", "grid_search"):
        return getattr(tune, kind)(list(args))
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(source, f"search_space.{key}.{kind}", f"arguments must be numbers, got {args}")
    n = {"loguniform": 2, "uniform": 2, "randint": 2, "qrandint": 3, "quniform": 3}[kind]
    if len(args) != n:
        raise ConfigError(source, f"search_space.{key}.{kind}", f"takes {n} numbers, got {len(args)}")
    if args[0] >= args[1] or (kind == "loguniform" and args[0] <= 0):
        raise ConfigError(source, f"search_space.{key}.{kind}", f"needs 0 < low < high (log) or low < high, got {args}")
    return getattr(tune, kind)(*args)


def load_sweep(path: str | Path, dataset: str | None = None) -> SweepSpec:
    """Load and check a sweep file (and its base training config)."""
    from rllib_configs.loader import REPO_ROOT, builder_parameters, load_train_config

    p = Path(path)
    f = from_mapping(SweepFile, load_yaml(p), source=p)
    base = Path(f.base) if Path(f.base).is_absolute() else REPO_ROOT / f.base
    if not base.is_file():
        raise ConfigError(p, "base", f"training config not found: {base}")
    train = load_train_config(base, dataset=dataset)
    cls = type(train.algo_config)
    for method, kwargs in f.overrides.items():
        params, _ = builder_parameters(cls, method) if hasattr(cls, method) else ({}, set())
        for name in kwargs:
            if name not in params:
                raise ConfigError(p, f"overrides.{method}.{name}", f"{cls.__name__}.{method}() has no such argument")
        getattr(train.algo_config, method)(**kwargs)
    space = {}
    for key, entry in f.search_space.items():
        method, _, name = key.partition(".")
        params, _ = builder_parameters(cls, method) if method and hasattr(cls, method) else ({}, set())
        if name not in params:
            raise ConfigError(p, f"search_space.{key}", f"not '<builder method>.<keyword>' of {cls.__name__}")
        space[(method, name)] = distribution(entry, p, key)
    if not space:
        raise ConfigError(p, "search_space", "empty: nothing to sweep")
    return SweepSpec(path=p, file=f, train=train, space=space)
