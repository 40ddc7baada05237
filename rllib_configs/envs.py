"""The gridrl envs as RLlib sees them: names for ``config.environment(env=...)``, and the boundary where
RLlib's untyped ``env_config`` becomes each env's typed dataclass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.config import from_mapping, to_mapping

EXPORT_ENV = "gridrl-export"
CITYLEARN_ENV = "gridrl-citylearn"
EXPORT_MODEL_ENV = "gridrl-export-model"


def make_export_env(env_config: dict[str, Any]) -> Any:
    """Env creator of ``gridrl-export`` (env_config -> ExportEnvConfig here, once).

    RLlib calls it with ``num_envs`` in the config when ``env_runners.gym_env_vectorize_mode`` is
    ``vector_entry_point``: the creator then returns the batched simulator (ExportControlVectorEnv, one
    kernel call steps every member) instead of one ExportControlEnv per member."""
    from envs.export_env import ExportControlEnv, ExportControlVectorEnv, ExportEnvConfig
    from envs.normalization import CLIP, NormalizeObservation, ObsNormalizer

    env_config = dict(env_config)
    num_envs = env_config.pop("num_envs", None)
    config = ExportEnvConfig.from_dict(env_config)
    if num_envs is None:
        env = ExportControlEnv(config)
        if config.normalization is not None:
            return NormalizeObservation(env, ObsNormalizer.load(config.normalization))
        return env
    import gymnasium as gym
    import numpy as np

    venv = ExportControlVectorEnv(int(num_envs), config)
    if config.normalization is None:
        return venv
    normalizer = ObsNormalizer.load(config.normalization)
    space = gym.spaces.Box(-CLIP, CLIP, venv.single_observation_space.shape, np.float32)
    return gym.wrappers.vector.TransformObservation(
        venv, normalizer, gym.vector.utils.batch_space(space, venv.num_envs), single_observation_space=space
    )


def make_citylearn_env(env_config: dict[str, Any]) -> Any:
    from envs.citylearn.env import make_citylearn_env as make

    return make(dict(env_config))


def make_export_model_env(env_config: dict[str, Any]) -> Any:
    """Env creator of ``gridrl-export-model``: the learned forward model from logged states (envs/dynamics/)."""
    from envs.dynamics.model_env import make_model_env

    return make_model_env(dict(env_config))


CREATORS = {EXPORT_ENV: make_export_env, CITYLEARN_ENV: make_citylearn_env, EXPORT_MODEL_ENV: make_export_model_env}


def register_rllib_envs() -> None:
    """Register gridrl's env names with Ray Tune (idempotent; call in the driver)."""
    from ray.tune.registry import register_env

    for name, creator in CREATORS.items():
        register_env(name, creator)


def _config_class(env: Any) -> type | None:
    if env == EXPORT_ENV:
        from envs.export_env import ExportEnvConfig

        return ExportEnvConfig
    if env == EXPORT_MODEL_ENV:
        from envs.dynamics.model_env import ModelEnvConfig

        return ModelEnvConfig
    if env == CITYLEARN_ENV:
        from envs.citylearn.env import CityLearnEnvConfig

        return CityLearnEnvConfig
    return None


def typed_env_config(env: Any, env_config: Any, source: Path) -> dict[str, Any]:
    """Check ``env_config`` against the env's dataclass at load time; returns its full dict form."""
    cls = _config_class(env)
    if cls is None:
        return env_config
    return to_mapping(from_mapping(cls, env_config, source=source, path="environment.env_config"))
