"""What a CityLearn policy sees: the raw central observation vector, encoded (numpy only, no CityLearn).

:class:`ObservationEncoder` turns CityLearn's raw central observation vector (``env.observations[0]``, in
``env.observation_names[0]`` order) into the policy's input, for the observation modes of
:class:`envs.citylearn.env.CityLearnEnvConfig`:

- ``normalized``: CityLearn's recommended normalisation, exactly what its ``NormalizedObservationWrapper``
  returns (hour, day type and month as cos/sin, every other value min-max scaled by the limits CityLearn
  estimates over the env's simulation window), clipped to [0, 1];
- ``clipped``: the raw values clipped to CityLearn's observation Box.

It is built once from a CityLearn env (:meth:`ObservationEncoder.from_env`: the env does it, and the
bundle exporter reads the training env's) and is plain data: :meth:`to_dict` is what a CityLearn bundle's
manifest carries under ``observation.encoding``, and :meth:`from_dict` rebuilds it on a box with numpy
alone (the Serve app, the edge). The same code encodes in training and in serving.

:func:`raw_spec` names the raw vector (names in order, a sha256 of them and a version string): a request
to a served CityLearn bundle is that vector, and its ``spec_version`` must be the bundle's.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

PERIODIC = {"hour": 24, "day_type": 7, "month": 12, "minutes": 59, "seconds": 59}  # CityLearn's x_max
MODES = ("normalized", "clipped")
RAW = 0
COS = 1
SIN = 2


def raw_spec(names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The raw central observation vector's names, their sha256 and a version string naming it.

    Names repeat (one per building for non-shared observations): the order is the contract.
    """
    digest = hashlib.sha256(json.dumps(list(names)).encode()).hexdigest()
    version = f"citylearn-obs-{digest[:12]}"
    return {"names": list(names), "n": len(names), "sha256": digest, "version": version}


class ObservationEncoder:
    """Raw central observation (n_raw,) -> the policy's input (n,) float32 (module docstring).

    ``normalized``: ``v = x[src]`` (or its cos/sin at ``2 pi / period``), then ``clip((v - low) / (high -
    low), 0, 1)`` (0 where ``high == low``). ``clipped``: ``clip(x, low, high)`` in float32.
    """

    def __init__(
        self,
        mode: str,
        raw_names: list[str],
        names: list[str],
        low: np.ndarray,
        high: np.ndarray,
        src: np.ndarray | None = None,
        kind: np.ndarray | None = None,
        period: np.ndarray | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"observation mode {mode!r}: one of {MODES}")
        self.mode = mode
        self.raw_names = list(raw_names)
        self.names = list(names)
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        n = len(self.names)
        if mode == "normalized":
            self.src = np.asarray(src, dtype=np.intp)
            self.kind = np.asarray(kind, dtype=np.intp)
            self.period = np.asarray(period, dtype=np.float64)
            shapes = {a.shape for a in (self.low, self.high, self.src, self.kind, self.period)}
            if shapes != {(n,)}:
                raise ValueError(f"normalized encoding: every array must have {n} entries, got {shapes}")
            if n and (self.src.min() < 0 or self.src.max() >= len(self.raw_names)):
                raise ValueError(f"normalized encoding: src indices outside [0, {len(self.raw_names)})")
            if not np.all(np.isin(self.kind, (RAW, COS, SIN))) or not np.all(self.period > 0):
                raise ValueError("normalized encoding: kind must be 0/1/2 and period > 0")
            self.angle = 2 * np.pi / self.period
            span = self.high - self.low
            self.inv_span = np.where(span != 0, 1.0 / np.where(span != 0, span, 1.0), 0.0)
        else:
            if self.low.shape != (n,) or self.high.shape != (n,) or n != len(self.raw_names):
                raise ValueError(f"clipped encoding: low and high must have {len(self.raw_names)} entries")
            self.low32 = self.low.astype(np.float32)
            self.high32 = self.high.astype(np.float32)

    @property
    def n_raw(self) -> int:
        return len(self.raw_names)

    @property
    def n(self) -> int:
        return len(self.names)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Encode one raw vector (n_raw,) or a batch (B, n_raw)."""
        if self.mode == "clipped":
            return np.clip(np.asarray(raw, dtype=np.float32), self.low32, self.high32)
        x = np.asarray(raw, dtype=np.float64)[..., self.src]
        v = np.where(
            self.kind == RAW, x, np.where(self.kind == COS, np.cos(x * self.angle), np.sin(x * self.angle))
        )
        return np.clip((v - self.low) * self.inv_span, 0.0, 1.0).astype(np.float32)

    # --- building and (de)serialising

    @classmethod
    def from_env(cls, env: Any, mode: str = "normalized") -> ObservationEncoder:
        """The encoder of a ``citylearn.citylearn.CityLearnEnv`` with a central agent."""
        raw_names = list(env.observation_names[0])
        if mode == "clipped":
            box = env.observation_space[0]
            return cls(mode, raw_names, raw_names, box.low, box.high)
        entries: list[tuple[int, str]] = []
        seen: set[str] = set()
        shared = set(env.shared_observations)
        for i, b in enumerate(env.buildings):
            for k in b.observations(normalize=False, periodic_normalization=False):
                if i == 0 or k not in shared or k not in seen:
                    entries.append((i, k))
                    seen.add(k)
        if [k for _, k in entries] != raw_names:
            raise RuntimeError("CityLearn observation order changed; use observations: citylearn")
        src, kind, period, lo, hi, names = [], [], [], [], [], []
        for j, (i, k) in enumerate(entries):
            low, high = env.buildings[i].periodic_normalized_observation_space_limits
            parts = [(f"{k}_cos", COS), (f"{k}_sin", SIN)] if k in PERIODIC else [(k, RAW)]
            for name, kd in parts:
                src.append(j)
                kind.append(kd)
                period.append(PERIODIC.get(k, 1))
                lo.append(float(low[name]))
                hi.append(float(high[name]))
                names.append(name)
        return cls(mode, raw_names, names, np.asarray(lo), np.asarray(hi), np.asarray(src), np.asarray(kind),
                   np.asarray(period, dtype=np.float64))  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "names": self.names,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }
        if self.mode == "normalized":
            out.update(src=self.src.tolist(), kind=self.kind.tolist(), period=self.period.tolist())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], raw_names: list[str]) -> ObservationEncoder:
        """Inverse of :meth:`to_dict` (a manifest's ``observation.encoding``); ValueError on a bad dict."""
        try:
            return cls(
                data["mode"],
                raw_names,
                data["names"],
                np.asarray(data["low"], dtype=np.float64),
                np.asarray(data["high"], dtype=np.float64),
                data.get("src"),
                data.get("kind"),
                data.get("period"),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"observation encoding: missing or malformed field ({exc})") from None
