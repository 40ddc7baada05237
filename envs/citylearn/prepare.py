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
- **A charger whose sessions name vehicles that are not defined** (or not included) in
  ``electric_vehicles_def`` gets a warning naming the charger: CityLearn 3.0.2 skips those sessions
  silently, as if no vehicle came.
- **What cannot work offline, or is missing, is a** :class:`~envs.config.ConfigError` naming the schema
  file and the entry, checked before CityLearn reads anything:

  - a required key (top level, a building's ``energy_simulation`` and ``weather``, a charger's ``type`` and
    ``charger_simulation``, a vehicle's ``battery`` capacity and power, a dynamics model's file ...);
  - a ``type`` that does not name a class CityLearn can import (a building, device, charger, vehicle,
    dynamics, occupant or outage model);
  - an ``autosize: true`` PV or battery (CityLearn downloads sizing data for it);
  - a data file that does not exist, a time series without a column CityLearn needs (or with one it would
    pass on as an unknown argument), or with fewer rows than the simulated window needs
    (``prepare_schema(..., start_time_step=, end_time_step=)``: the window the env simulates);
  - a ``seconds_per_time_step`` or step that is not a number, a window that ends before it starts, an
    ``observations``/``actions`` entry that is not a mapping, no building included.
- ``root_directory`` is resolved as CityLearn resolves it for a path (the schema's folder by default).

:func:`citylearn_errors` turns whatever CityLearn still raises while building the env (a ``KeyError`` on an
observation it does not know, ``Unknown action``, an attribute its class does not take, a value of the
wrong type) into a ConfigError naming the schema entry: the key the error names, found in the schema, or
the building, device or vehicle CityLearn was loading when it failed.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import inspect
import json
import numbers
import re
import warnings
from collections.abc import Iterator
from copy import deepcopy
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from envs.config import ConfigError, lookup

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
BUILDING_SERIES = {
    "energy_simulation": "EnergySimulation",
    "weather": "Weather",
    "carbon_intensity": "CarbonIntensity",
    "pricing": "Pricing",
}
"""A building's time series files and the ``citylearn.data`` class CityLearn 3.0.2 builds from each (its
columns are that class's arguments)."""
CHARGER_COLUMNS = (
    "electric_vehicle_charger_state",
    "electric_vehicle_id",
    "electric_vehicle_departure_time",
    "electric_vehicle_required_soc_departure",
    "electric_vehicle_estimated_arrival_time",
    "electric_vehicle_estimated_soc_arrival",
)
"""Columns CityLearn 3.0.2 requires in a charger's ``charger_simulation`` file."""
DEVICES = (
    "cooling_device",
    "heating_device",
    "dhw_device",
    "dhw_storage",
    "cooling_storage",
    "heating_storage",
    "electrical_storage",
    "pv",
)
"""A building's device blocks CityLearn 3.0.2 builds (each with a ``type``)."""


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
    block = schema.get("reward_function")
    theirs = block.get("type") if isinstance(block, dict) else None
    attributes = (block.get("attributes") or {}) if isinstance(block, dict) else {}
    if theirs == REWARD_CLASS and isinstance(attributes, dict):
        return {"type": REWARD_CLASS, "attributes": {**attributes, **reward_kwargs}}
    if block:  # anything else the schema says about its reward is replaced, and the warning says what
        if isinstance(theirs, str):
            what = theirs
        elif isinstance(theirs, dict):
            what = "a per-building mapping of reward classes"
        elif isinstance(block, dict):
            what = "a block without a reward class"
        else:
            what = repr(block)
        names = sorted(attributes) if isinstance(attributes, dict) else []
        _warn(
            path,
            "reward_function",
            f"{what} replaced by gridrl's {REWARD_CLASS}"
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


def _class(path: Path, entry: str, dotted: Any, required: bool = True) -> None:
    """The ``type`` at ``entry`` must name a class CityLearn can import (``module.Class``)."""
    if dotted is None and not required:
        return
    if not isinstance(dotted, str) or "." not in dotted:
        example = "'citylearn.energy_model.Battery'"
        raise ConfigError(path, entry, f"must be a class path such as {example}, got {dotted!r}")
    module, _, name = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except Exception as exc:  # noqa: BLE001 - any import failure is the schema's entry's problem
        problem = f"cannot import {module!r} for {dotted!r}: {type(exc).__name__}: {exc}"
        raise ConfigError(path, entry, problem) from exc
    if not inspect.isclass(found):
        raise ConfigError(path, entry, f"{dotted!r}: {module} has no class {name!r}")


def _mapping(path: Path, entry: str, value: Any, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        problem = "required, missing" if value is None else f"must be a mapping, got {type(value).__name__}"
        raise ConfigError(path, entry, problem)
    return value


def _require(path: Path, entry: str, block: dict[str, Any], key: str) -> Any:
    if block.get(key) in (None, ""):
        raise ConfigError(path, f"{entry}.{key}", "required by CityLearn 3.0.2, missing")
    return block[key]


def _file(path: Path, entry: str, root: Path, name: Any) -> Path:
    f = root / str(name)
    if not f.is_file():
        raise ConfigError(path, entry, f"file not found: {f}")
    return f


@lru_cache(maxsize=4096)
def _table(file: Path, mtime_ns: int, size: int) -> tuple[tuple[str, ...], int]:
    """Column names and data rows of a CSV (or Parquet) time series (cached per file version)."""
    if file.suffix.lower() in (".parquet", ".pq", ".parq"):
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(file)
        return tuple(meta.schema_arrow.names), int(meta.metadata.num_rows)
    with file.open(newline="") as f:
        header = next(csv.reader(f), [])
    data = file.read_bytes()
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    blank = data.count(b"\n\n") + data.count(b"\n\r\n")  # pandas skips blank lines
    return tuple(header), max(lines - blank - 1, 0)


def table_shape(file: Path) -> tuple[tuple[str, ...], int]:
    """Column names and number of data rows of a time series file."""
    st = file.stat()
    return _table(file.resolve(), st.st_mtime_ns, st.st_size)


@cache
def _arguments(class_name: str) -> tuple[frozenset[str], frozenset[str] | None]:
    """Required arguments and all arguments (None: it takes any) of a ``citylearn.data`` class."""
    import citylearn.data

    params = list(inspect.signature(getattr(citylearn.data, class_name).__init__).parameters.values())[1:]
    required = frozenset(
        p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return required, None
    return required, frozenset(p.name for p in params) - {"noise_std", "seconds_per_time_step"}


def _series(
    path: Path,
    entry: str,
    file: Path,
    needs: tuple[int, int],
    required: frozenset[str] | tuple[str, ...],
    allowed: frozenset[str] | None = None,
) -> None:
    """A time series file has CityLearn's columns and the rows of the simulated window ``needs``."""
    try:
        columns, rows = table_shape(file)
    except Exception as exc:  # noqa: BLE001 - unreadable is the entry's problem
        raise ConfigError(path, entry, f"cannot read {file}: {type(exc).__name__}: {exc}") from exc
    missing = [c for c in required if c not in columns]
    if missing:
        problem = f"{file} has no column(s) {sorted(missing)} (CityLearn 3.0.2 needs them)"
        raise ConfigError(path, entry, problem)
    unknown = [c for c in columns if allowed is not None and c not in allowed]
    if unknown:
        raise ConfigError(
            path, entry, f"{file} has column(s) {unknown} that CityLearn 3.0.2 does not take (remove them)"
        )
    first, last = needs
    if rows < last + 1:
        raise ConfigError(
            path,
            entry,
            f"{file} has {rows} data rows; the simulated steps [{first}, {last}] need {last + 1} "
            "(a step is a row index): shorten the window (simulation_end_time_step, end_time_step) "
            "or complete the file",
        )


@lru_cache(maxsize=4096)
def _vehicle_ids(file: Path, mtime_ns: int, size: int, first: int, last: int) -> frozenset[str]:
    """The vehicle names a charger's time series plugs in over steps [first, last] (cached per file
    version and window)."""
    import pandas as pd

    if file.suffix.lower() in (".parquet", ".pq", ".parq"):
        ids = pd.read_parquet(file, columns=["electric_vehicle_id"])["electric_vehicle_id"]
        ids = ids.iloc[first : last + 1]
    else:
        ids = pd.read_csv(
            file,
            usecols=["electric_vehicle_id"],
            dtype=str,
            skiprows=range(1, first + 1),
            nrows=last - first + 1,
        )["electric_vehicle_id"]
    return frozenset(str(v).strip() for v in ids.dropna() if str(v).strip() not in ("", "nan"))


def _unknown_vehicles(
    path: Path, entry: str, file: Path, vehicles: frozenset[str], needs: tuple[int, int]
) -> None:
    """Warn when a charger's sessions in the simulated window name vehicles CityLearn does not simulate
    (it skips them silently)."""
    st = file.stat()
    unknown = sorted(_vehicle_ids(file.resolve(), st.st_mtime_ns, st.st_size, *needs) - vehicles)
    if unknown:
        shown = unknown[:5] + (["..."] if len(unknown) > 5 else [])
        _warn(
            path,
            entry,
            f"its sessions of {len(unknown)} vehicle(s) {shown} are skipped by CityLearn 3.0.2: they are "
            "not in electric_vehicles_def (or not included)",
        )


def _check_building(
    name: str, b: Any, root: Path, path: Path, needs: tuple[int, int], vehicles: frozenset[str]
) -> bool:
    """Check one building entry (``vehicles``: the included vehicles' names); returns whether it is
    included."""
    where = f"buildings.{name}"
    if not isinstance(b, dict):
        raise ConfigError(path, where, f"must be a mapping, got {type(b).__name__}")
    if not b.get("include", True):
        return False
    if not b.get("energy_simulation"):
        raise ConfigError(path, f"{where}.energy_simulation", "required (the building's time series file)")
    if not b.get("weather"):
        raise ConfigError(path, f"{where}.weather", "required (the weather time series file)")
    _class(path, f"{where}.type", b.get("type"), required=False)
    for key, class_name in BUILDING_SERIES.items():
        f = b.get(key)
        if f:
            required, allowed = _arguments(class_name)
            _series(path, f"{where}.{key}", _file(path, f"{where}.{key}", root, f), needs, required, allowed)
    for device in DEVICES:
        d = _mapping(path, f"{where}.{device}", b.get(device), required=False)
        if not d:
            continue
        _class(path, f"{where}.{device}.type", d.get("type"))
        _mapping(path, f"{where}.{device}.attributes", d.get("attributes"), required=False)
        if device in ("pv", "electrical_storage") and d.get("autosize"):
            raise ConfigError(
                path,
                f"{where}.{device}.autosize",
                "true needs CityLearn's sizing data, which it "
                "downloads; set autosize: false and give attributes.nominal_power (and capacity)",
            )
    for cid, c in _mapping(path, f"{where}.chargers", b.get("chargers"), required=False).items():
        at = f"{where}.chargers.{cid}"
        c = _mapping(path, at, c)
        _class(path, f"{at}.type", _require(path, at, c, "type"))
        _mapping(path, f"{at}.attributes", c.get("attributes"), required=False)
        f = _file(path, f"{at}.charger_simulation", root, _require(path, at, c, "charger_simulation"))
        _series(path, f"{at}.charger_simulation", f, needs, CHARGER_COLUMNS)
        _unknown_vehicles(path, f"{at}.charger_simulation", f, vehicles, needs)
    if b.get("dynamics") is not None:
        d = _mapping(path, f"{where}.dynamics", b["dynamics"])
        _class(path, f"{where}.dynamics.type", _require(path, f"{where}.dynamics", d, "type"))
        attributes = _mapping(path, f"{where}.dynamics.attributes", d.get("attributes"))
        model = _require(path, f"{where}.dynamics.attributes", attributes, "filename")
        _file(path, f"{where}.dynamics.attributes.filename", root, model)
    if b.get("occupant") is not None:
        o = _mapping(path, f"{where}.occupant", b["occupant"])
        _class(path, f"{where}.occupant.type", _require(path, f"{where}.occupant", o, "type"))
        params = _require(path, f"{where}.occupant", o, "parameters_filename")
        _file(path, f"{where}.occupant.parameters_filename", root, params)
        attributes = _mapping(path, f"{where}.occupant.attributes", o.get("attributes"))
        for key in ("setpoint_increase_model_filename", "setpoint_decrease_model_filename"):
            model = _require(path, f"{where}.occupant.attributes", attributes, key)
            _file(path, f"{where}.occupant.attributes.{key}", root, model)
    outage = _mapping(path, f"{where}.power_outage", b.get("power_outage"), required=False)
    if outage.get("stochastic_power_outage_model") is not None:
        at = f"{where}.power_outage.stochastic_power_outage_model"
        model = _mapping(path, at, outage["stochastic_power_outage_model"])
        _class(path, f"{at}.type", _require(path, at, model, "type"))
    appliances = _mapping(path, f"{where}.deferrable_appliances", b.get("deferrable_appliances"), False)
    for aid, a in appliances.items():
        at = f"{where}.deferrable_appliances.{aid}"
        a = _mapping(path, at, a)
        _class(path, f"{at}.type", a.get("type"), required=False)
        for key in ("cycle_profiles_file", "flexibility_schedule_file"):
            _file(path, f"{at}.{key}", root, _require(path, at, a, key))
    for eid, e in _mapping(path, f"{where}.escalators", b.get("escalators"), required=False).items():
        at = f"{where}.escalators.{eid}"
        e = _mapping(path, at, e)
        _class(path, f"{at}.type", e.get("type"), required=False)
        key = "simulation" if e.get("simulation") else "simulation_file"
        f = _file(path, f"{at}.{key}", root, _require(path, at, e, key))
        _series(path, f"{at}.{key}", f, needs, ())
    return True


def _check_vehicles(schema: dict[str, Any], path: Path) -> frozenset[str]:
    """Check the vehicle definitions; returns the included vehicles' names."""
    included: set[str] = set()
    vehicles = _mapping(path, "electric_vehicles_def", schema.get("electric_vehicles_def"), required=False)
    for name, ev in vehicles.items():
        at = f"electric_vehicles_def.{name}"
        ev = _mapping(path, at, ev)
        if not ev.get("include", True):
            continue
        included.add(str(name))
        _class(path, f"{at}.type", ev.get("type"), required=False)
        battery = _mapping(path, f"{at}.battery", ev.get("battery"))
        attributes = _mapping(path, f"{at}.battery.attributes", battery.get("attributes"))
        for key in ("capacity", "nominal_power"):
            value = _require(path, f"{at}.battery.attributes", attributes, key)
            _number(path, f"{at}.battery.attributes.{key}", value)
    return frozenset(included)


def _number(path: Path, entry: str, value: Any, minimum: float | None = None, integer: bool = False) -> float:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(path, entry, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(path, entry, f"must be >= {minimum}, got {value!r}")
    return value


def _check_top(schema: dict[str, Any], path: Path, start: int | None, end: int | None) -> tuple[int, int]:
    """Top-level fields; returns the simulated window [first, last] (steps)."""
    _number(path, "seconds_per_time_step", schema["seconds_per_time_step"], minimum=1e-9)
    first = _number(path, "simulation_start_time_step", schema["simulation_start_time_step"], 0, True)
    last = _number(path, "simulation_end_time_step", schema["simulation_end_time_step"], 0, True)
    first = first if start is None else start
    last = last if end is None else end
    if last <= first:
        raise ConfigError(
            path,
            "simulation_end_time_step",
            f"the simulated window [{first}, {last}] (the schema's, or start_time_step/end_time_step given "
            "over it) must end after it starts",
        )
    for section in ("observations", "actions"):
        for key, value in _mapping(path, section, schema[section]).items():
            _mapping(path, f"{section}.{key}", value)
    return int(first), int(last)


def _root(schema: dict[str, Any], path: Path) -> Path:
    configured = schema.get("root_directory")
    if configured is None:
        return path.parent.resolve()
    root = Path(str(configured)).expanduser()
    return (root if root.is_absolute() else path.parent / root).resolve()


def prepare_schema(
    path: str | Path,
    reward_kwargs: dict[str, Any] | None = None,
    start_time_step: int | None = None,
    end_time_step: int | None = None,
) -> dict[str, Any]:
    """The schema at ``path`` as a dict CityLearn 3.0.2 builds from, with gridrl's reward (module docstring).

    Args:
        path: A schema.json file.
        reward_kwargs: Fields of :class:`envs.citylearn.reward.RewardConfig`; they override the attributes of
            a schema that already names our reward.
        start_time_step: First simulated step, if not the schema's (the time series are checked for it).
        end_time_step: Last simulated step, if not the schema's.

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
    needs = _check_top(schema, path, start_time_step, end_time_step)
    root = _root(schema, path)
    vehicles = _check_vehicles(schema, path)
    buildings = schema["buildings"].items()
    included = [_check_building(name, b, root, path, needs, vehicles) for name, b in buildings]
    if not any(included):
        raise ConfigError(path, "buildings", "no building is included (every one has include: false)")
    schema["root_directory"] = str(root)
    schema["reward_function"] = _reward_block(schema, path, dict(reward_kwargs or {}))
    schema.setdefault("central_agent", True)
    return schema


def simulation_window(path: str | Path) -> tuple[int, int, float]:
    """The schema's own simulated steps [first, last] and its seconds per step, checked (a ConfigError
    naming the field otherwise)."""
    path = Path(path)
    schema = read_schema(path)
    for key in REQUIRED:
        if key not in schema:
            raise ConfigError(path, key, "required by CityLearn 3.0.2, missing")
    first, last = _check_top(schema, path, None, None)
    return first, last, float(schema["seconds_per_time_step"])


def find_entry(schema: Any, key: str, prefix: str = "") -> str | None:
    """The dotted path of the first mapping key ``key`` in ``schema`` (depth first), or None."""
    if not isinstance(schema, dict):
        return None
    if key in schema:
        return f"{prefix}{key}"
    for k, v in schema.items():
        found = find_entry(v, key, f"{prefix}{k}.")
        if found:
            return found
    return None


def _loading_context(exc: BaseException) -> str | None:
    """The schema entry CityLearn's loader was building when ``exc`` was raised (from its frames' locals)."""
    context = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.replace("\\", "/").endswith("citylearn/internal/loading.py"):
            names = frame.f_locals
            function = frame.f_code.co_name
            if function == "load_electric_vehicle" and "electric_vehicle_name" in names:
                context = f"electric_vehicles_def.{names['electric_vehicle_name']}"
            elif "building_name" in names:
                context = f"buildings.{names['building_name']}"
                if function == "load_deferrable_appliance" and "appliance_name" in names:
                    context += f".deferrable_appliances.{names['appliance_name']}"
                elif function == "load_escalator" and "escalator_name" in names:
                    context += f".escalators.{names['escalator_name']}"
                elif function == "load_building" and "device_name" in names:
                    context += f".{names['device_name']}"  # the device loop is the loader's last step
        tb = tb.tb_next
    return context


def entry_of_error(exc: BaseException, schema: dict[str, Any]) -> str:
    """The schema entry an error of CityLearn's loader is about: a key it names (searched where the loader
    was, then everywhere), else where the loader was, else ``<schema>``."""
    context = _loading_context(exc)
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    names = [text] if isinstance(exc, KeyError) else re.findall(r"'([^']+)'", text)
    names += re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\W*$", text)  # e.g. "Unknown action: foo_storage"
    for name in names:
        for where in ([context] if context else []) + [""]:
            node = lookup(schema, where) if where else schema
            found = find_entry(node, name, f"{where}." if where else "")
            if found:
                return found
    if isinstance(exc, KeyError) and names:
        return f"{context}.{names[0]}" if context else names[0]
    return context or "<schema>"


@contextlib.contextmanager
def citylearn_errors(path: Path, schema: dict[str, Any]) -> Iterator[None]:
    """Turn CityLearn's errors while it builds an env from ``schema`` into ConfigErrors naming the entry
    (see :func:`entry_of_error`); a ConfigError (ours, e.g. from the reward's settings) passes unchanged."""
    try:
        yield
    except ConfigError:
        raise
    except KeyError as exc:
        key = str(exc.args[0]) if exc.args else "?"
        raise ConfigError(
            path,
            entry_of_error(exc, schema),
            f"CityLearn 3.0.2 cannot load it (KeyError {key!r}); remove it or set it inactive",
        ) from exc
    except FileNotFoundError as exc:
        raise ConfigError(
            path,
            _loading_context(exc) or "<data file>",
            f"CityLearn could not open {exc.filename or exc}",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - whatever CityLearn raises on a schema is the schema's problem
        raise ConfigError(
            path,
            entry_of_error(exc, schema),
            f"CityLearn 3.0.2 cannot load it: {type(exc).__name__}: {exc}",
        ) from exc
