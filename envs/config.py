"""Typed configuration: YAML or dict -> frozen dataclasses, with errors that name the file and the field.

Every gridrl configuration (sites, env settings, rewards, datasets, sweeps) is a dataclass whose fields are
documented where they are declared. This module is the one place that turns a mapping into such a
dataclass, through pydantic: unknown keys, missing keys and wrong types are errors, never silently dropped.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator

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


def _yaml_scalars(schema: Any) -> Any:
    """pydantic's lax mode as YAML means it: a list fills a tuple, but numbers, booleans and strings are taken
    as written ("3" is not an int, 1 is not true), and a key a dataclass does not declare is refused."""
    if isinstance(schema, list):
        for item in schema:
            _yaml_scalars(item)
    elif isinstance(schema, dict):
        if schema.get("type") in ("int", "float", "bool", "str"):
            schema["strict"] = True
        elif schema.get("type") == "dataclass-args":
            schema["extra_behavior"] = "forbid"
        for key, value in schema.items():
            if key != "default":  # a field's default value is data, not schema
                _yaml_scalars(value)
    return schema


@functools.cache
def yaml_validator(tp: Any) -> SchemaValidator:
    """pydantic's validator of type ``tp`` for values read from YAML or JSON (see ``_yaml_scalars``).

    Raises pydantic's PydanticUserError family when pydantic cannot check ``tp`` (an arbitrary class).
    """
    return SchemaValidator(_yaml_scalars(copy.deepcopy(TypeAdapter(tp).core_schema)))


def _type_at(tp: Any, loc: tuple[Any, ...]) -> Any:
    """The annotated type at pydantic's error location ``loc`` under ``tp`` (Optional unwrapped)."""
    for part in (*loc, None):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
        if part is None:
            return tp
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp)[part]
        elif typing.get_origin(tp) is tuple and args[-1] is not Ellipsis:
            tp = args[part]
        else:  # an item of a list or tuple[X, ...], a value of a dict
            tp = args[-1 if typing.get_origin(tp) is dict else 0] if args else Any
    return tp


def _where(path: str, loc: tuple[Any, ...]) -> str:
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "<root>"


def from_mapping(cls: type[T], data: Any, source: str | Path | None = None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` through pydantic, checking keys and types recursively.

    Args:
        cls: A dataclass type; nested dataclasses, lists, tuples, dicts, Optionals and Literals are handled.
        data: The mapping read from YAML/JSON (or the CLI).
        source: File the data came from, for error messages.
        path: Dotted path of ``data`` within the file, for error messages.

    Returns:
        An instance of ``cls``. Its ``__post_init__`` may add range checks; a ValueError raised there
        whose message starts with a field name (``"field: problem"``) is a ConfigError naming that field.
    """
    try:
        return yaml_validator(cls).validate_python(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]  # the first, in field order
        loc, kind, value = err["loc"], err["type"], err["input"]
        if kind == "missing":
            problem = "required but missing"
        elif kind == "unexpected_keyword_argument":
            known = ", ".join(sorted(f.name for f in dataclasses.fields(_type_at(cls, loc[:-1]))))
            problem = f"unknown key (known: {known})"
        elif kind in ("dataclass_type", "dict_type"):
            problem = f"expected a mapping, got {type(value).__name__}"
        elif kind == "value_error":  # raised by a __post_init__
            cause = err["ctx"]["error"]
            if isinstance(cause, ConfigError):
                raise cause from None
            field, _, problem = str(cause).partition(": ")
            known = {f.name for f in dataclasses.fields(_type_at(cls, loc))}
            loc, problem = ((*loc, field), problem) if field in known and problem else (loc, str(cause))
        else:
            problem = f"{err['msg']}, got {type(value).__name__} {value!r}"
        raise ConfigError(source, _where(path, loc), problem) from exc


def lookup(tree: Any, path: str, sep: str = ".") -> Any:
    """The value at ``path`` (keys joined by ``sep``) in nested mappings, or None where a key is missing or
    a step is not a mapping: ``lookup(result, "env_runners/episode_return_mean", "/")``."""
    node = tree
    for key in path.split(sep):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def to_mapping(obj: Any) -> Any:
    """Inverse of from_mapping: a dataclass (recursively) as plain dicts/lists, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj
