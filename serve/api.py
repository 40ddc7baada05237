"""The policy server's HTTP contract: request and response models, and strict validation of a state.

``POST /act`` takes one state of the export domain (envs/state_spec.py), either

* by feature name: ``{"state": {"export_w_l1": 812.0, ..., "doy_cos": -0.43, ...}}``: all N_FEATURES
  names, no other, ``spec_version`` optional (if given it must match), or
* as the ordered vector: ``{"state": [812.0, ...], "spec_version": "export-state-v3"}``: exactly
  N_FEATURES values in FEATURE_NAMES order; the version is required, since the order means nothing
  without it;

plus optional ``site_id`` (the rollout key and the log partition; default ``default``), ``request_id`` (the
dedupe key of the log; a retried request should reuse it) and ``time_s`` (UTC Unix time of the meter
reading the state ends with; default the server's clock). Values must be JSON numbers (not strings, not
booleans), finite, and within the spec's bounds; anything else is refused with a 4xx whose ``detail``
names the field and the problem, before any controller sees it.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from envs.actions import ACTION_NAMES
from envs.state_spec import FEAT, FEATURE_HIGH, FEATURE_LOW, FEATURE_NAMES, N_FEATURES, SPEC_VERSION
from serve.config import ID_PATTERN, MODES, Mode

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# Broad enough for any Unix time of a meter reading (1970..2286); the log partitions by its UTC day.
TIME_LOW, TIME_HIGH = 0.0, 1e10


def _feature_schema(i: int) -> dict[str, Any]:
    return {"type": "number", "minimum": float(FEATURE_LOW[i]), "maximum": float(FEATURE_HIGH[i])}


_BY_NAME = {
    "type": "object",
    "description": "by feature name (all of them)",
    "properties": {n: _feature_schema(i) for i, n in enumerate(FEATURE_NAMES)},
    "required": list(FEATURE_NAMES),
    "additionalProperties": False,
}
_VECTOR = {
    "type": "array",
    "description": f"ordered vector ({N_FEATURES} values in the spec's order); needs spec_version",
    "prefixItems": [_feature_schema(i) for i in range(N_FEATURES)],
    "items": False,
    "minItems": N_FEATURES,
    "maxItems": N_FEATURES,
}
_STATE_SCHEMA = {"oneOf": [_BY_NAME, _VECTOR]}


def act_request_schema() -> dict[str, Any]:
    """The JSON schema of ``POST /act``'s body, with every constraint the server checks: each feature
    within the spec's bounds, ``spec_version`` this server's (required with a vector), ids by pattern,
    ``time_s`` within range. (Export domain; serve/domains.py says how another domain adds its state.)"""

    def nullable(schema: dict[str, Any]) -> dict[str, Any]:  # null = not given (the default applies)
        return {"anyOf": [schema, {"type": "null"}]}

    version = {"type": "string", "const": SPEC_VERSION, "description": "state spec version"}
    common = {
        "site_id": {"type": "string", "pattern": ID_PATTERN, "default": "default",
                    "description": "site: its bundle, mode and session; the log partition"},
        "request_id": nullable({"type": "string", "pattern": ID_PATTERN,
                                "description": "dedupe key of the decision log"}),
        "time_s": nullable({"type": "number", "minimum": TIME_LOW, "maximum": TIME_HIGH,
                            "description": "UTC Unix time of the meter reading (default: server clock)"}),
    }  # fmt: skip
    return {
        "title": "ActRequest",
        "oneOf": [
            {"type": "object", "properties": {"state": _BY_NAME, "spec_version": nullable(version), **common},
             "required": ["state"], "additionalProperties": False},
            {"type": "object", "properties": {"state": _VECTOR, "spec_version": version, **common},
             "required": ["state", "spec_version"], "additionalProperties": False},
        ],
    }  # fmt: skip


class StateError(ValueError):
    """A request's state does not fit its site's domain (HTTP 422); the message starts with the field."""


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}: expected a number, got {type(v).__name__} {str(v)[:40]!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{where}: not a finite number ({v})")
    return x


def _numbers(values: list[Any]) -> np.ndarray | None:
    """``values`` as float64 when every one is a finite JSON number (not a bool); None otherwise, and
    :func:`_number` then names the first bad one. The common case in one numpy call instead of one
    Python check per feature: 13 us instead of 27 us per state here."""
    if not all(type(v) is float or type(v) is int for v in values):
        return None
    try:
        x = np.array(values, np.float64)
    except OverflowError:
        return None
    return x if np.isfinite(x).all() else None


def parse_state(value: Any) -> tuple[np.ndarray, bool]:
    """(state vector (30,) float64, given by name?) or ValueError naming the feature and the problem."""
    if isinstance(value, dict):
        missing = [n for n in FEATURE_NAMES if n not in value]
        unknown = sorted(k for k in value if k not in FEAT)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing feature(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unknown:
                parts.append(f"unknown feature(s) {[str(u)[:40] for u in unknown[:5]]}")
            raise ValueError(f"{'; '.join(parts)} (spec {SPEC_VERSION}: {N_FEATURES} names)")
        x = _numbers([value[n] for n in FEATURE_NAMES])
        if x is None:
            x = np.array([_number(value[n], n) for n in FEATURE_NAMES])
        by_name = True
    elif isinstance(value, list):
        if len(value) != N_FEATURES:
            raise ValueError(f"expected {N_FEATURES} values (spec {SPEC_VERSION}), got {len(value)}")
        x = _numbers(value)
        if x is None:
            x = np.array([_number(v, f"[{i}] {FEATURE_NAMES[i]}") for i, v in enumerate(value)])
        by_name = False
    else:
        raise ValueError(
            f"expected an object of {N_FEATURES} named features or a list of {N_FEATURES} numbers, "
            f"got {type(value).__name__}"
        )
    out = np.flatnonzero((x < FEATURE_LOW) | (x > FEATURE_HIGH))
    if out.size:
        i = int(out[0])
        raise ValueError(
            f"{FEATURE_NAMES[i]} = {x[i]:g} is outside the spec's bounds "
            f"[{FEATURE_LOW[i]:g}, {FEATURE_HIGH[i]:g}]"
            + (f" ({out.size} features out of bounds)" if out.size > 1 else "")
        )
    return x, by_name


class ActRequest(BaseModel):
    """One decision request."""

    model_config = ConfigDict(extra="forbid")

    state: Annotated[Any, WithJsonSchema(_STATE_SCHEMA)] = Field(
        ..., description="the state vector, by feature name or ordered (envs/state_spec.py)"
    )
    spec_version: str | None = Field(
        None, max_length=64, description=f"state spec version; required for a vector ({SPEC_VERSION})"
    )
    site_id: str = Field("default", pattern=ID_PATTERN, description="site: rollout key and log partition")
    request_id: str | None = Field(None, pattern=ID_PATTERN, description="dedupe key of the decision log")
    time_s: FiniteFloat | None = Field(
        None, ge=TIME_LOW, le=TIME_HIGH, description="UTC Unix time of the state's meter reading"
    )

    @field_validator("state", mode="plain")
    @classmethod
    def _state(cls, v: Any) -> Any:
        if not isinstance(v, (dict, list)):
            parse_state(v)  # raises the clear message; the full check is the site's domain's (vector())
        return v

    def vector(self) -> np.ndarray:
        """The validated export-domain state vector; ValueError naming the field (``state: ...`` or
        ``spec_version: ...``) if it does not fit. Other domains parse ``state`` themselves
        (serve/domains.py ``Runtime.parse_state``)."""
        try:
            x, by_name = parse_state(self.state)
        except ValueError as exc:
            raise ValueError(f"state: {exc}") from None
        check_spec_version(self.spec_version, by_name)
        return x


def check_spec_version(spec_version: str | None, by_name: bool) -> None:
    """ValueError unless ``spec_version`` fits a state given by name (optional) or as a vector (required)."""
    if spec_version is None and not by_name:
        raise ValueError(f"spec_version: required with an ordered vector (this server: {SPEC_VERSION})")
    if spec_version is not None and spec_version != SPEC_VERSION:
        raise ValueError(
            f"spec_version: {spec_version!r} is not this server's {SPEC_VERSION!r}; "
            "send the state by feature name or re-export the client"
        )


class ActResponse(BaseModel):
    """The targets to send and where they came from."""

    action_w: list[float] = Field(..., description=f"per-phase targets, W: {', '.join(ACTION_NAMES)}")
    action_names: list[str] = Field(default=list(ACTION_NAMES))
    source: str = Field(
        ..., description="policy, pi or fallback (the safety wrapper's PI, or a safe ramp-down)"
    )
    checks_fired: list[str] = Field(..., description="safety checks that fired for the action sent")
    model_version: str = Field(..., description="bundle name and manifest sha256 prefix")
    mode: str
    rolled_back: bool = Field(..., description="the deployment was rolled back to the PI automatically")
    site_id: str
    request_id: str
    spec_version: str = SPEC_VERSION


SiteId = Annotated[str, Field(pattern=ID_PATTERN)]


class ModeChange(BaseModel):
    """Admin: a new mode and/or rollout percentage, for the deployment's default or one site; clears a
    rollback (the operator re-arms the policy)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={  # at least one of them, not null
            "anyOf": [
                {"required": ["mode"], "properties": {"mode": {"enum": list(MODES)}}},
                {"required": ["rollout_pct"], "properties": {"rollout_pct": {"type": "number"}}},
            ]
        },
    )
    mode: Mode | None = Field(None, description="shadow, ab, rollout or production")
    rollout_pct: FiniteFloat | None = Field(None, ge=0.0, le=100.0)
    reason: str = Field("", max_length=200, description="recorded in the control history")
    site_id: SiteId | None = Field(None, description="this site only (default: the deployment's default)")

    @model_validator(mode="after")
    def _something(self) -> ModeChange:
        if self.mode is None and self.rollout_pct is None:
            raise ValueError("give mode and/or rollout_pct")
        return self


class BundleSwap(BaseModel):
    """Admin: serve another bundle (the deployment's default or one site's); it is verified first and
    refused if it does not fit."""

    model_config = ConfigDict(extra="forbid")
    bundle: str = Field(..., min_length=1, max_length=4096, description="bundle folder, readable by replicas")
    reason: str = Field("", max_length=200)
    site_id: SiteId | None = Field(None, description="this site only (default: the deployment's default)")
