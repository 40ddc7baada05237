"""YAML -> RLlib ``AlgorithmConfig``, one-to-one with the builder methods.

A training config file looks like::

    algorithm: PPO                # an RLlib algorithm (or A2C: see rllib_configs/a2c.py)
    environment:                  # = config.environment(**mapping)
      env: gridrl-export
      env_config: {episode_s: 3600}
    training: {lr: 0.0003, gamma: 0.99}
    env_runners: {num_env_runners: 1}

Every other top-level key is the name of an ``AlgorithmConfig`` builder method and its mapping holds
that method's keyword arguments. The loader checks, before anything runs, that each method exists,
each keyword is one the method (or a parent class's version of it) accepts, and each value has the
annotated type where pydantic can check the annotation; a mistake is a :class:`~envs.config.ConfigError`
naming the file and the key. ``env_config`` of the gridrl envs is converted to its typed dataclass
here, once, so its errors surface at load time too.

``rl_module: {rl_module_spec: {module_class: a.dotted.Class}}`` names a custom RLModule class (RLlib fills
in the rest of the spec); its ``model_config`` keys are the module's to check.

Values may use ``${dataset}`` (the ``--dataset`` directory) and ``${repo}`` (the repository root).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import PydanticUserError, ValidationError

from envs.config import ConfigError, load_yaml, yaml_validator

REPO_ROOT = Path(__file__).resolve().parents[1]
# Keys that are not builder methods.
META_KEYS = ("algorithm", "gridrl")
# Builder methods a YAML may call (AlgorithmConfig's public setters).
BUILDER_METHODS = (
    "environment", "env_runners", "learners", "training", "evaluation", "offline_data", "rl_module",
    "reporting", "checkpointing", "debugging", "fault_tolerance", "resources", "framework", "callbacks",
    "multi_agent", "api_stack", "python_environment", "experimental",
)


@dataclass(frozen=True)
class GridrlSettings:
    """The ``gridrl:`` section: settings of the run that are not RLlib builder calls."""

    domain: Literal["export", "citylearn"] = "export"
    """Domain of the config: export or citylearn (decides the evaluator and the bundle)."""
    init_from: str | None = None
    """A checkpoint whose RLModule weights initialise this one (CQL from BC), matched by parameter name."""
    eval_days: int = 2
    """Held-out days ``gridrl evaluate`` uses by default."""

    def __post_init__(self) -> None:
        if self.eval_days < 1:
            raise ValueError(f"eval_days: must be >= 1, got {self.eval_days}")


@dataclass
class TrainSpec:
    """A loaded training config: the RLlib config plus gridrl's own settings."""

    path: Path
    algorithm: str
    algo_config: Any  # ray.rllib.algorithms.algorithm_config.AlgorithmConfig
    settings: GridrlSettings
    raw: dict[str, Any]


def _annotation(param: inspect.Parameter, fn: Any) -> Any:
    """``param``'s annotation resolved by ``typing`` in ``fn``'s module; None when there is none, and the
    annotation as written (a string) when it names a type RLlib imports only for type checkers."""
    if param.annotation is inspect.Parameter.empty:
        return None
    holder = types.SimpleNamespace(__annotations__={param.name: param.annotation})
    try:
        return typing.get_type_hints(holder, vars(inspect.getmodule(fn)))[param.name]
    except Exception:  # NameError and the like
        return param.annotation


def _names_an_object(annotation: Any) -> bool:
    """The argument takes a class or a callable, which a YAML gives as a dotted path (see _import_object)."""
    return re.search(r"\b(Type|type|Callable)\b", str(annotation)) is not None  # not NoneType


def _fits(value: Any, annotation: Any) -> bool:
    """False when pydantic says a YAML ``value`` is not of ``annotation``; True when it is, or when the
    annotation is not one pydantic can check (a class, a callable, an unknown type)."""
    if annotation is None or isinstance(annotation, str) or _names_an_object(annotation):
        return True
    try:
        yaml_validator(annotation).validate_python(value)
    except ValidationError:
        return False
    except (PydanticUserError, TypeError):  # a type pydantic has no schema for: not checked here
        pass
    return True


def _old_stack_only(fn: Any) -> set[str]:
    """Arguments RLlib marks ``# @OldAPIStack`` in the signature: ignored by the new API stack."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return set()
    head = src.split('"""', 1)[0]
    return {line.split(":")[0].strip() for line in head.splitlines() if "@OldAPIStack" in line and ":" in line}


def builder_parameters(config_cls: type, method: str) -> tuple[dict[str, Any], set[str]]:
    """(keyword parameter -> resolved annotation, old-stack-only names) of ``method`` over the MRO."""
    params: dict[str, Any] = {}
    old: set[str] = set()
    for klass in reversed(config_cls.__mro__):
        fn = klass.__dict__.get(method)
        if fn is None:
            continue
        old |= _old_stack_only(fn)
        for name, p in inspect.signature(fn).parameters.items():
            if name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                params[name] = _annotation(p, fn)
    return params, old


def _import_object(value: Any, annotation: Any) -> Any:
    """A dotted path given for a class- or callable-typed builder argument, imported."""
    if not isinstance(value, str) or "." not in value or not _names_an_object(annotation):
        return value
    import importlib

    module, _, attr = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {value!r}: {exc}") from exc


def _module_spec(value: dict[str, Any], source: Path) -> Any:
    """``rl_module.rl_module_spec: {module_class: dotted.Path}`` -> an RLModuleSpec (RLlib fills the rest)."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    unknown = set(value) - {"module_class"}
    if unknown or "module_class" not in value:
        got = sorted(value)
        raise ConfigError(source, "rl_module.rl_module_spec", f"only module_class is read, got {got}")
    try:
        cls = _import_object(value["module_class"], "Type")
    except ValueError as exc:
        raise ConfigError(source, "rl_module.rl_module_spec.module_class", str(exc)) from exc
    if not isinstance(cls, type):
        field = "rl_module.rl_module_spec.module_class"
        raise ConfigError(source, field, f"{value['module_class']!r} is not a class")
    return RLModuleSpec(module_class=cls)


def substitute(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in variables.items():
            value = value.replace("${" + k + "}", v)
        return value
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def load_train_config(path: str | Path, dataset: str | None = None, model: str | None = None) -> TrainSpec:
    """Load and check a training YAML; returns the RLlib config (not built) and gridrl's settings.

    Raises:
        ConfigError: unknown algorithm, builder method or keyword; wrong type; bad env_config.
    """
    from envs.config import from_mapping
    from rllib_configs.algorithms import config_class
    from rllib_configs.envs import typed_env_config

    p = Path(path)
    raw = load_yaml(p)
    variables = {"repo": str(REPO_ROOT)}
    if dataset is not None:
        variables["dataset"] = str(Path(dataset).resolve())
    if model is not None:
        variables["model"] = str(Path(model).resolve())
    data = substitute(raw, variables)
    if "algorithm" not in data:
        raise ConfigError(p, "algorithm", "required (e.g. PPO, SAC, BC, CQL, A2C)")
    algorithm = str(data["algorithm"]).upper()
    if algorithm == "FORWARD_MODEL":  # not an RLlib algorithm: see rllib_configs/forward_model.py
        from rllib_configs.forward_model import load_model_spec

        settings = from_mapping(GridrlSettings, data.get("gridrl", {}), source=p, path="gridrl")
        model_spec = load_model_spec(p, data)
        return TrainSpec(path=p, algorithm=algorithm, algo_config=model_spec, settings=settings, raw=raw)
    try:
        cls = config_class(algorithm)
    except ValueError as exc:
        raise ConfigError(p, "algorithm", str(exc)) from exc
    settings = from_mapping(GridrlSettings, data.get("gridrl", {}), source=p, path="gridrl")
    config = cls()
    for key, kwargs in data.items():
        if key in META_KEYS:
            continue
        if key not in BUILDER_METHODS:
            raise ConfigError(p, key, f"not an AlgorithmConfig builder method (known: {', '.join(BUILDER_METHODS)})")
        if not isinstance(kwargs, dict):
            raise ConfigError(p, key, f"expected a mapping of keyword arguments, got {type(kwargs).__name__}")
        params, old_stack = builder_parameters(cls, key)
        for name, value in kwargs.items():
            if name not in params:
                raise ConfigError(p, f"{key}.{name}", f"{cls.__name__}.{key}() has no such argument")
            if name in old_stack:
                raise ConfigError(
                    p, f"{key}.{name}", "RLlib's old API stack only: the new API stack (used here) ignores it"
                )
            if value is not None and not _fits(value, params[name]):
                raise ConfigError(p, f"{key}.{name}", f"wrong type {type(value).__name__} ({value!r}); expected {params[name]}")
        try:
            kwargs = {name: _import_object(value, params[name]) for name, value in kwargs.items()}
        except ValueError as exc:
            raise ConfigError(p, key, str(exc)) from exc
        if key == "rl_module" and isinstance(kwargs.get("rl_module_spec"), dict):
            kwargs = {**kwargs, "rl_module_spec": _module_spec(kwargs["rl_module_spec"], p)}
        if key == "environment" and "env_config" in kwargs:
            kwargs = {**kwargs, "env_config": typed_env_config(kwargs.get("env"), kwargs["env_config"], p)}
        if key == "offline_data" and dataset is None and any("${dataset}" in str(v) for v in raw[key].values()):
            raise ConfigError(p, "offline_data.input_", "uses ${dataset}: pass --dataset DIR")
        try:
            getattr(config, key)(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(p, key, str(exc)) from exc
    _check_pi_residual(config, p)
    return TrainSpec(path=p, algorithm=algorithm, algo_config=config, settings=settings, raw=raw)


def _check_pi_residual(config: Any, source: Path) -> None:
    """``model_config.pi_residual`` (rllib_configs/pi_residual.py): typed at load time, and its action scale
    must be the training site's, or the PI inside the module would command the wrong watts."""
    mc = config.model_config if isinstance(config.model_config, dict) else {}
    if "pi_residual" not in mc:
        return
    from envs.config import from_mapping
    from rllib_configs.envs import EXPORT_ENV
    from rllib_configs.pi_residual import ResidualConfig

    path = "rl_module.model_config.pi_residual"
    residual = from_mapping(ResidualConfig, dict(mc["pi_residual"] or {}), source=source, path=path)
    if config.env != EXPORT_ENV:
        raise ConfigError(source, path, f"the PI inside it is the export domain's; env is {config.env!r}")
    from envs.export_env import ExportEnvConfig

    site = ExportEnvConfig.from_dict(config.env_config).load_site()
    if residual.max_power_per_phase_w != site.control.max_power_per_phase_w:
        raise ConfigError(
            source, f"{path}.max_power_per_phase_w",
            f"{residual.max_power_per_phase_w} W, but site {site.name!r} has control.max_power_per_phase_w "
            f"{site.control.max_power_per_phase_w} W",
        )
