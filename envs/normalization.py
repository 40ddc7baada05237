"""Normalisation of the state vector for the networks: ``(obs - mean) / std``, clipped to +-10.

One format everywhere, the ``normalization.json`` that ``gridrl data build`` writes (statistics of the
train split): ``{"state_spec_sha256": ..., "obs": {"names": [...], "mean": [...], "std": [...]}, ...}``.
Online training without a dataset uses the shipped ``envs/normalization_default.json``, made by
``python -m envs.normalization`` from PI rollouts over every scenario (so it is reproducible). A bundle's
manifest carries the statistics its policy was trained with.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.state_spec import FEATURE_NAMES, N_FEATURES, spec_dict

DEFAULT_PATH = Path(__file__).parent / "normalization_default.json"
CLIP = 10.0


@dataclass(frozen=True)
class ObsNormalizer:
    """Fixed per-feature statistics of the state vector."""

    mean: np.ndarray
    std: np.ndarray
    source: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> ObsNormalizer:
        obs = data.get("obs")
        if not isinstance(obs, dict) or "mean" not in obs or "std" not in obs:
            raise ValueError(f"{source}: not a normalization file (needs obs.mean and obs.std)")
        if list(obs.get("names", FEATURE_NAMES)) != list(FEATURE_NAMES):
            raise ValueError(f"{source}: its feature names differ from the state spec {spec_dict()['version']}")
        mean, std = np.asarray(obs["mean"], np.float64), np.asarray(obs["std"], np.float64)
        if mean.shape != (N_FEATURES,) or std.shape != (N_FEATURES,) or np.any(std <= 0):
            raise ValueError(f"{source}: obs.mean/obs.std must be {N_FEATURES} values, std > 0")
        return cls(mean, std, source)

    @classmethod
    def load(cls, path: str | Path | None = "default") -> ObsNormalizer:
        """Load ``path`` ('default' = the shipped file)."""
        p = DEFAULT_PATH if path in (None, "default") else Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"normalization file not found: {p}")
        return cls.from_dict(json.loads(p.read_text()), str(p))

    def to_dict(self) -> dict[str, Any]:
        return {"state_spec_sha256": spec_dict()["sha256"],
                "obs": {"names": list(FEATURE_NAMES), "mean": self.mean.tolist(), "std": self.std.tolist()}}

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        z = (np.asarray(obs, np.float64) - self.mean) / self.std
        return np.clip(np.nan_to_num(z, nan=0.0), -CLIP, CLIP).astype(np.float32)


class NormalizeObservation(gym.ObservationWrapper):
    """The env's state vector, normalised with fixed statistics (what the networks see)."""

    def __init__(self, env: gym.Env, normalizer: ObsNormalizer):
        super().__init__(env)
        self.normalizer = normalizer
        self.observation_space = gym.spaces.Box(-CLIP, CLIP, (N_FEATURES,), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.normalizer(observation)


def compute_default(seed: int = 0, windows_per_scenario: int = 4) -> ObsNormalizer:
    """Statistics of the state vector under the PI, over daylight hour windows of every scenario."""
    from envs.export_env import ExportEnvConfig
    from envs.profiles import SCENARIOS
    from envs.rollout import make_controller, rollout

    obs = []
    for i, scenario in enumerate(sorted(SCENARIOS)):
        for w in range(windows_per_scenario):
            cfg = ExportEnvConfig(scenario=scenario, episode_s=3600)
            obs.append(rollout(make_controller("pi", 7500), cfg, seed=seed * 1000 + i * 100 + w).obs)
    x = np.concatenate(obs).astype(np.float64)
    std = x.std(0)
    return ObsNormalizer(x.mean(0), np.where(std > 1e-9, std, 1.0), "envs.normalization.compute_default")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the default normalization of the state vector.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_PATH))
    args = ap.parse_args()
    Path(args.out).write_text(json.dumps(compute_default(args.seed).to_dict(), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
