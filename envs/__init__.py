"""gridrl environments: the export-control simulator and its controllers, and the CityLearn domain."""

from envs.export_env import ENV_ID, ExportControlEnv, ExportEnvConfig, register_envs

register_envs()

__all__ = ["ENV_ID", "ExportControlEnv", "ExportEnvConfig", "register_envs"]
