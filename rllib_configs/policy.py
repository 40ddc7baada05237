"""A trained policy, loaded from an RLlib checkpoint, as an export-domain controller.

The runner writes ``gridrl_run.json`` beside the trials of every run (:func:`write_run_info`): the
algorithm, the domain, the env config and the normalisation statistics the networks were trained
with. :func:`load_policy` finds it by walking up from the checkpoint, so a checkpoint path is all the
evaluator and the bundle exporter need. Evaluators (envs/) take the loaded :class:`Policy`; an export-domain
controller is ``envs.controllers.PolicyController(policy, max_w)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from envs.normalization import ObsNormalizer

RUN_INFO = "gridrl_run.json"
MODULE_SUBDIR = Path("learner_group") / "learner" / "rl_module" / "default_policy"


def write_run_info(exp_dir: str | Path, info: dict[str, Any]) -> None:
    """Write ``gridrl_run.json`` into a run's directory (local or a storage URI)."""
    from rllib_configs import storage

    storage.write_text(storage.join(exp_dir, RUN_INFO), json.dumps(info, indent=2, default=str) + "\n")


def find_run_info(checkpoint: str | Path) -> dict[str, Any]:
    """The run info of the run a checkpoint belongs to (its own directory or a parent's)."""
    p = Path(checkpoint).resolve()
    for d in (p, *p.parents):
        if (d / RUN_INFO).is_file():
            return json.loads((d / RUN_INFO).read_text())
    raise FileNotFoundError(f"{checkpoint}: no {RUN_INFO} in it or its parents (not a gridrl training run?)")


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a Tune run: an experiment directory or one trial's directory.

    Ray reads it: an experiment's trials come from its experiment state (``ray.tune.ExperimentAnalysis``);
    a trial's checkpoints from the trial's folder (``ray.tune.Result.from_path``, ``checkpoint_*`` by
    index), not from the experiment state, which Tune saves periodically and a killed driver may leave
    behind what is on disk. Of several trials, the one whose newest checkpoint was written last.
    """
    from ray.tune import ExperimentAnalysis, Result

    run_dir = Path(run_dir).resolve()
    try:
        trial_dirs = [Path(t.path) for t in ExperimentAnalysis(str(run_dir)).trials]
    except (ValueError, FileNotFoundError):  # no experiment_state-*.json: a trial's directory, or not Tune's
        trial_dirs = [run_dir]
    found = []
    for trial in trial_dirs:
        try:
            ckpt = Result.from_path(str(trial)).checkpoint
        except RuntimeError:  # no such folder, or no result.json/progress.csv: the trial never reported
            continue
        if ckpt is not None:
            found.append(Path(ckpt.path))
    if not found:
        raise FileNotFoundError(f"no checkpoint under {run_dir} (a Tune experiment or trial directory)")
    return max(found, key=lambda p: (p.stat().st_mtime, p.name))


def module_path(checkpoint: str | Path) -> Path:
    """The RLModule directory of an algorithm checkpoint (or the path itself if it is one).

    A checkpoint promoted by ``gridrl tune`` (``<storage>/best/<domain>/<algo>/``) holds the algorithm
    checkpoint in its ``checkpoint/`` folder, beside ``gridrl_run.json``: the promoted folder is accepted too.
    The path is absolute: RLlib reads it through pyarrow, which takes a relative path for a URI.
    """
    p = Path(checkpoint).resolve()
    if (p / MODULE_SUBDIR).is_dir():
        return p / MODULE_SUBDIR
    if (p / "checkpoint" / MODULE_SUBDIR).is_dir():
        return p / "checkpoint" / MODULE_SUBDIR
    if (p / "module_state.pkl").is_file() or (p / "class_and_ctor_args.pkl").is_file():
        return p
    raise FileNotFoundError(f"{checkpoint}: not an RLlib algorithm checkpoint (no {MODULE_SUBDIR})")


def deterministic_module(module: Any) -> Any:
    """A ``torch.nn.Module``: normalised state (B, F) -> the RLModule's greedy action (B, 3) in [-1, 1].

    PPO/A2C (diagonal Gaussian): the mean half of ``action_dist_inputs``. SAC/CQL (squashed Gaussian):
    ``tanh`` of the mean, scaled to the action space's bounds. Then clipped to [-1, 1].
    """
    import torch

    dist_cls = module.get_inference_action_dist_cls()
    kind = getattr(dist_cls, "func", dist_cls).__name__
    if kind not in ("TorchDiagGaussian", "TorchSquashedGaussian", "TorchDeterministic"):
        raise ValueError(f"cannot export action distribution {kind} (continuous Box actions only)")
    n_actions = int(np.prod(module.action_space.shape))  # export: 3 per-phase targets; CityLearn: 25, 129
    supervisor = getattr(getattr(module, "residual", None), "allocation", None) == "supervisor"
    low = float(np.min(module.action_space.low))
    high = float(np.max(module.action_space.high))

    class Deterministic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            if supervisor:  # the per-phase targets its preference gives (rllib_configs/pi_residual.py)
                return torch.clamp(self.module.deployed_action(obs), -1.0, 1.0)
            logits = self.module.forward_inference({"obs": obs})["action_dist_inputs"]
            a = logits if kind == "TorchDeterministic" else logits[:, :n_actions]
            if kind == "TorchSquashedGaussian":
                a = (torch.tanh(a) + 1.0) * (0.5 * (high - low)) + low
            return torch.clamp(a, -1.0, 1.0)

    net = Deterministic().eval()
    net.kind = kind
    return net



@dataclass
class Policy:
    """The greedy (deterministic) policy of a checkpoint, on raw state vectors."""

    module: Any
    normalizer: ObsNormalizer | None
    info: dict[str, Any]
    checkpoint: Path
    net: Any = None
    """:func:`deterministic_module` of ``module``: the greedy action, the same graph the bundle exports."""

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = deterministic_module(self.module)

    def for_site(self, site: Any) -> Policy:
        """This policy, told ``site``'s layout (a :class:`~envs.site.Site`): a module that spreads the PI's
        total by device kind (rllib_configs/pi_residual.py, allocation 'learned' or 'supervisor') gets the
        site's water heaters per phase, as that site's master is configured, its envs/site.py
        ``site_features`` (which a supervisor trained with the env's ``site_features`` reads) and the order
        in which its networks read the site's phases (envs/controllers.py ``phase_map``: the phase whose
        devices play each training phase's role) and the power that starts its on/off and stepped devices
        (envs/dispatch.py ``start_power_w``, for the preference's gate); other policies are unchanged."""
        from envs.controllers import continuous_power, phase_map
        from envs.dispatch import start_power_w
        from envs.site import load_site, site_features

        cfg = getattr(self.module, "residual", None)
        if cfg is not None and cfg.allocation != "residual":
            env_config = self.info.get("env_config") or {}
            trained_gate = float(env_config.get("preference_gate") or 0.0)
            if cfg.allocation == "supervisor" and trained_gate != cfg.preference_gate:
                raise ValueError(
                    f"{self.checkpoint}: trained with env_config.preference_gate {trained_gate:g} but its "
                    f"module's pi_residual.preference_gate is {cfg.preference_gate:g}: deployed, it would "
                    "spread the PI's total otherwise than in training; set both to the same value in the "
                    "config"
                )
            trained_on = load_site(env_config.get("site"))
            self.module.residual = replace(
                cfg,
                start_power_w=start_power_w(site),
                continuous_w=tuple(float(w) for w in continuous_power(site)),
                site_features=tuple(float(f) for f in site_features(site)),
                phase_order=phase_map(trained_on, site),
            )
        return self

    def act_unit(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions in [-1, 1] (B, 3) for raw state vectors (B, F)."""
        import torch

        x = np.atleast_2d(obs)
        if self.normalizer is not None:
            x = self.normalizer(x)
        with torch.no_grad():
            a = self.net(torch.as_tensor(x, dtype=torch.float32)).cpu().numpy()
        return np.clip(a, -1.0, 1.0)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The greedy action of one observation: a CityLearn controller (envs/citylearn/baselines.py)."""
        return self.act_unit(obs)[0]


def load_policy(checkpoint: str | Path) -> Policy:
    """Load the RLModule of ``checkpoint`` and the normalisation its run used."""
    import torch
    from ray.rllib.core.rl_module.rl_module import RLModule

    torch.set_num_threads(1)
    info = find_run_info(checkpoint)
    module = RLModule.from_checkpoint(str(module_path(checkpoint)))
    module.eval()
    norm = info.get("normalization")
    normalizer = ObsNormalizer.from_dict(norm, source=f"{checkpoint}: {RUN_INFO}") if norm else None
    return Policy(module, normalizer, info, Path(checkpoint))


def load_module_policy(checkpoint: str | Path) -> Policy:
    """The greedy policy of an RLlib (new API stack) checkpoint without its run's info: an Algorithm
    checkpoint folder or the RLModule folder inside it (``learner_group/learner/rl_module/default_policy``).

    It acts on the observations it is given, unnormalised: for a CityLearn module on its training window
    (envs/citylearn/evaluate.py's module docstring says when that is right).
    """
    from ray.rllib.core.rl_module.rl_module import RLModule

    module = RLModule.from_checkpoint(str(module_path(checkpoint)))
    module.eval()
    return Policy(module, None, {}, Path(checkpoint))
