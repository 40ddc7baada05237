"""Typed configuration: YAML or dict -> frozen dataclasses, with errors that name the file and the field.

Every gridrl configuration (sites, env settings, rewards, datasets, sweeps) is a dataclass whose fields are
documented where they are declared. This module is the one place that turns a mapping into such a
dataclass: unknown keys, missing keys and wrong types are errors, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type.

    The message always names the source (file) and the dotted path of the field.
    """

    def __init__(self, source: str | Path | None, field: str, problem: str) -> None:
        self.source = str(source) if source is not None else "<config>"
        self.field = field
        self.problem = problem
        super().__init__(f"{self.source}: field '{field}': {problem}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; a clear ConfigError if the file is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(p, "<file>", "file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(p, "<file>", f"not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(p, "<file>", f"top level must be a mapping, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, source: Any, path: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, path)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(source, path, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(source, path, f"must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, source, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(source, path, f"expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(source, path, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, source, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, source, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, path, f"expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, source, f"{path}.{k}"): _convert(v, val_tp, source, f"{path}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, path, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(source, path, f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, path, f"expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, path, f"expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_mapping(cls: type[T], data: Any, source: str | Path | None = None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively.

    Args:
        cls: A dataclass type; nested dataclasses, lists, tuples, unions and Literals are handled.
        data: The mapping read from YAML/JSON (or the CLI).
        source: File the data came from, for error messages.
        path: Dotted path of ``data`` within the file, for error messages.

    Returns:
        An instance of ``cls``. Its ``__post_init__`` may add range checks; a ValueError raised
        there is re-raised as ConfigError naming the field path.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(source, path or "<root>", f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(source, where, f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], source, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(source, where, "required but missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        msg = str(exc)
        field, _, problem = msg.partition(": ")
        if field in fields and problem:
            where = f"{path}.{field}" if path else field
            raise ConfigError(source, where, problem) from exc
        raise ConfigError(source, path or "<root>", msg) from exc


def to_mapping(obj: Any) -> Any:
    """Inverse of from_mapping: a dataclass (recursively) as plain dicts/lists, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
