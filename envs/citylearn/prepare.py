"""Any CityLearn 3.0.2 schema a user brings, made ready for gridrl's env: checked, with our reward.

:func:`prepare_schema` reads a schema.json and returns the dict CityLearn is built from:

- **Our reward replaces theirs.** The schema's ``reward_function`` block (any class, its own attributes, or
  a per-building mapping) is replaced by :class:`envs.citylearn.reward.MultiObjectiveReward`. Its attributes
  are kept only when the block already names that class; otherwise they are not ours to read, and a
  warning says what was replaced. (CityLearn itself would pass the schema's attributes to our class when
  no keyword overrides them, or ignore our class for a per-building mapping.)
- **What CityLearn 3.0.2 cannot load is dropped with a warning** naming the entry: the legacy washing
  machines (``observations.washing_machine_*``, ``actions.washing_machine``,
  ``buildings.<name>.washing_machines``; CityLearn 3.0.2 fails on them with
  ``KeyError: 'washing_machine_start_time_step'``).
- **What cannot work offline, or is missing, is a** :class:`~envs.config.ConfigError` naming the schema
  file and the entry: a required key, an ``autosize: true`` PV or battery (CityLearn downloads sizing data
  for it), a data file a building or charger names that does not exist.
- ``root_directory`` is resolved as CityLearn resolves it for a path (the schema's folder by default).

:func:`citylearn_errors` turns what CityLearn still raises while building the env (a ``KeyError`` on an
observation it does not know, a missing column) into a ConfigError naming the schema entry.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

from envs.config import ConfigError

REWARD_CLASS = "envs.citylearn.reward.MultiObjectiveReward"
REQUIRED = (
    "buildings",
    "observations",
    "actions",
    "simulation_start_time_step",
    "simulation_end_time_step",
    "seconds_per_time_step",
)
"""Top-level keys CityLearn 3.0.2 reads without a default."""
LEGACY_OBSERVATION_PREFIXES = ("washing_machine_",)
LEGACY_ACTIONS = ("washing_machine",)
LEGACY_BUILDING_KEYS = ("washing_machines",)
BUILDING_FILES = ("energy_simulation", "weather", "carbon_intensity", "pricing")


class SchemaWarning(UserWarning):
    """A schema entry gridrl dropped or replaced (the message names it)."""


def read_schema(path: Path) -> dict[str, Any]:
    """The JSON of ``path``; a ConfigError naming the file if it is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "<file>", f"cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(path, "<file>", f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(path, "<file>", f"top level must be a JSON object, got {type(data).__name__}")
    return data


_WARNED: set[str] = set()


def _warn(path: Path, entry: str, what: str) -> None:
    """Warn once per process and message (vectorised sampling builds many envs from one schema)."""
    message = f"{path}: {entry}: {what}"
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, SchemaWarning, stacklevel=3)


def _reward_block(schema: dict[str, Any], path: Path, reward_kwargs: dict[str, Any]) -> dict[str, Any]:
    block = schema.get("reward_function") or {}
    theirs = block.get("type") if isinstance(block, dict) else None
    attributes = (block.get("attributes") or {}) if isinstance(block, dict) else {}
    if theirs == REWARD_CLASS and isinstance(attributes, dict):
        return {"type": REWARD_CLASS, "attributes": {**attributes, **reward_kwargs}}
    if theirs is not None:
        names = sorted(attributes) if isinstance(attributes, dict) else []
        _warn(
            path,
            "reward_function",
            f"{theirs if isinstance(theirs, str) else 'per-building mapping'} "
            f"replaced by gridrl's {REWARD_CLASS}"
            + (f" (its attributes {names} are not used)" if names else ""),
        )
    return {"type": REWARD_CLASS, "attributes": dict(reward_kwargs)}


def _drop_legacy(schema: dict[str, Any], path: Path) -> None:
    for section, match in (
        ("observations", lambda k: k.startswith(LEGACY_OBSERVATION_PREFIXES)),
        ("actions", lambda k: k in LEGACY_ACTIONS),
    ):
        entries = schema.get(section)
        if not isinstance(entries, dict):
            raise ConfigError(path, section, f"must be a mapping, got {type(entries).__name__}")
        for key in [k for k in entries if match(k)]:
            del entries[key]
            _warn(path, f"{section}.{key}", "dropped: CityLearn 3.0.2 cannot load legacy washing machines")
    for name, b in schema["buildings"].items():
        for key in LEGACY_BUILDING_KEYS:
            if isinstance(b, dict) and key in b:
                del b[key]
                _warn(
                    path,
                    f"buildings.{name}.{key}",
                    "dropped: CityLearn 3.0.2 cannot load legacy washing machines",
                )
        for key in ("inactive_observations", "inactive_actions"):
            if isinstance(b, dict) and isinstance(b.get(key), list):
                b[key] = [
                    k for k in b[key] if not str(k).startswith(LEGACY_OBSERVATION_PREFIXES + LEGACY_ACTIONS)
                ]


def _check_building(name: str, b: Any, root: Path, path: Path) -> None:
    where = f"buildings.{name}"
    if not isinstance(b, dict):
        raise ConfigError(path, where, f"must be a mapping, got {type(b).__name__}")
    if not b.get("include", True):
        return
    if not b.get("energy_simulation"):
        raise ConfigError(path, f"{where}.energy_simulation", "required (the building's time series file)")
    for key in BUILDING_FILES:
        f = b.get(key)
        if f and not (root / str(f)).is_file():
            raise ConfigError(path, f"{where}.{key}", f"file not found: {root / str(f)}")
    for device in ("pv", "electrical_storage"):
        d = b.get(device)
        if isinstance(d, dict) and d.get("autosize"):
            raise ConfigError(
                path,
                f"{where}.{device}.autosize",
                "true needs CityLearn's sizing data, which it "
                "downloads; set autosize: false and give attributes.nominal_power (and capacity)",
            )
    for cid, c in (b.get("chargers") or {}).items():
        f = c.get("charger_simulation") if isinstance(c, dict) else None
        if f and not (root / str(f)).is_file():
            raise ConfigError(
                path, f"{where}.chargers.{cid}.charger_simulation", f"file not found: {root / str(f)}"
            )


def _root(schema: dict[str, Any], path: Path) -> Path:
    configured = schema.get("root_directory")
    if configured is None:
        return path.parent.resolve()
    root = Path(str(configured)).expanduser()
    return (root if root.is_absolute() else path.parent / root).resolve()


def prepare_schema(path: str | Path, reward_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schema at ``path`` as a dict CityLearn 3.0.2 builds from, with gridrl's reward (module docstring).

    Args:
        path: A schema.json file.
        reward_kwargs: Fields of :class:`envs.citylearn.reward.RewardConfig`; they override the attributes of
            a schema that already names our reward.

    Raises:
        ConfigError: Naming the schema file and the entry (see the module docstring).
    """
    path = Path(path)
    schema = deepcopy(read_schema(path))
    for key in REQUIRED:
        if key not in schema:
            raise ConfigError(path, key, "required by CityLearn 3.0.2, missing")
    if not isinstance(schema["buildings"], dict) or not schema["buildings"]:
        raise ConfigError(path, "buildings", "must be a non-empty mapping of building name -> building")
    _drop_legacy(schema, path)
    root = _root(schema, path)
    for name, b in schema["buildings"].items():
        _check_building(name, b, root, path)
    schema["root_directory"] = str(root)
    schema["reward_function"] = _reward_block(schema, path, dict(reward_kwargs or {}))
    schema.setdefault("central_agent", True)
    return schema


def _entry_of(key: str, schema: dict[str, Any]) -> str:
    """Where ``key`` appears in ``schema`` (a dotted entry), or ``key`` itself."""
    for section in ("observations", "actions"):
        if key in (schema.get(section) or {}):
            return f"{section}.{key}"
    for name, b in (schema.get("buildings") or {}).items():
        if isinstance(b, dict) and key in b:
            return f"buildings.{name}.{key}"
    return key


@contextlib.contextmanager
def citylearn_errors(path: Path, schema: dict[str, Any]) -> Iterator[None]:
    """Turn CityLearn's errors while it builds an env from ``schema`` into ConfigErrors naming the entry."""
    try:
        yield
    except KeyError as exc:
        key = str(exc.args[0]) if exc.args else "?"
        raise ConfigError(
            path,
            _entry_of(key, schema),
            f"CityLearn 3.0.2 cannot load it (KeyError {key!r}); remove it or set it inactive",
        ) from exc
    except FileNotFoundError as exc:
        raise ConfigError(path, "<data file>", f"CityLearn could not open {exc.filename or exc}") from exc
