"""Fine-tuning a trained run on a new dataset: the policy and the forward model from their checkpoints.

``gridrl retrain`` (serve/retrain.py) continues training what a bundle was made from on a dataset that
holds new logs. Both models go through the one runner (rllib_configs/runner.py ``run_training``), with
the config their own run was trained with:

* **The config.** A run's ``gridrl_run.json`` holds the YAML it was trained with (``config_yaml``, as
  written, with its ``${dataset}``): it is written to ``CONFIGS/<name>.yaml`` with ``overrides`` applied
  (dotted keys, as the pipeline's profiles shrink configs) and loaded with the new dataset. An override of
  a key the YAML does not have is an error naming the key and the file.
* **The policy** keeps the normalisation its networks were trained with: the run's statistics (its
  ``gridrl_run.json``) are written to ``CONFIGS/policy_normalization.json`` and replace
  ``${dataset}/normalization.json`` in the YAML (the new dataset's statistics would shift every input
  of the networks it starts from). It starts from the checkpoint's whole RLModule where the algorithm is
  the same (CQL's Q networks and their targets too: an actor trained against fresh critics forgets what it
  knew), else from its policy networks only (``init_policy_from_checkpoint``, as CQL starts from BC).
  Only offline algorithms are fine-tuned here: a run trained online learned from its simulator, not from
  logs.
* **The forward model** starts from its checkpoint's weights and normalisation (``init_from``:
  rllib_configs/forward_model.py ``Trainer.init_from``); the optimiser and its schedule start afresh.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from rllib_configs.algorithms import OFFLINE_ALGORITHMS
from rllib_configs.policy import RUN_INFO, find_run_info, latest_checkpoint, module_path

DATASET_NORMALIZATION = "${dataset}/normalization.json"
SUPERVISOR = "OFFLINE_SUPERVISOR"
"""rllib_configs/offline_supervisor.py ALGORITHM, as run infos are compared here (upper case)."""


class FinetuneError(ValueError):
    """A checkpoint cannot be fine-tuned (the message names the checkpoint and what is wrong)."""


def run_info_of(checkpoint: str | Path, what: str) -> dict[str, Any]:
    """The ``gridrl_run.json`` of the run ``checkpoint`` belongs to; FinetuneError naming it otherwise."""
    if not Path(checkpoint).exists():
        raise FinetuneError(f"{what} {checkpoint}: not found")
    try:
        info = find_run_info(checkpoint)
    except FileNotFoundError as exc:
        raise FinetuneError(f"{what} {exc}") from exc
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"{what} {checkpoint}: its {RUN_INFO} cannot be read ({exc})") from exc
    if not isinstance(info.get("config_yaml"), dict):
        raise FinetuneError(
            f"{what} {checkpoint}: its {RUN_INFO} has no config_yaml (the YAML it was trained with)"
        )
    return info


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else text


def parse_overrides(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings (dotted keys, YAML values) as a mapping; ValueError naming ``flag``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with a dotted KEY (training.lr=0.0003)")
        out[key.strip()] = _parse_value(value)
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``data`` with each dotted key set; KeyError naming the key and ``source`` if absent."""
    data = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            if not isinstance(node, dict) or not isinstance(node.get(key), dict):
                raise KeyError(f"{source}: no key {dotted} to override")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"{source}: no key {dotted} to override")
        node[leaf] = value
    return data


def _replace(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, list):
        return [_replace(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, old, new) for k, v in value.items()}
    return value


def module_state(checkpoint: str | Path) -> dict[str, Any]:
    """Every parameter a checkpoint's RLModule saved, target networks included (SAC/CQL's: a module loaded
    with ``RLModule.from_checkpoint`` has none until ``make_target_networks`` builds them)."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = str(module_path(checkpoint))
    module = RLModule.from_checkpoint(path)
    if hasattr(module, "make_target_networks"):
        module.make_target_networks()
        module.restore_from_path(path)
    return module.state_dict()


def init_module_from_checkpoint(algorithm: Any, checkpoint: str, **_: Any) -> None:
    """``on_algorithm_init`` callback: load a checkpoint's whole RLModule (policy, Q networks, targets)
    into the algorithm's; every parameter must be there with its shape (the same algorithm and network)."""
    import torch

    state = module_state(checkpoint)

    def load(learner: Any) -> int:
        module = learner.module["default_policy"]
        own = module.state_dict()
        bad = sorted(k for k in set(own) | set(state)
                     if k not in own or k not in state or own[k].shape != state[k].shape)  # fmt: skip
        if bad:
            raise ValueError(f"init_from {checkpoint}: the module does not fit this config's: {bad[:4]}")
        module.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
        return len(state)

    algorithm.learner_group.foreach_learner(load)
    print(f"[train] initialised the whole module from {checkpoint} ({len(state)} tensors)", flush=True)


def _checkpoint_dir(checkpoint: str | Path) -> Path:
    """An algorithm checkpoint: the path itself, a promoted best/ folder's checkpoint/, or a run's newest."""
    p = Path(checkpoint)
    try:
        module_path(p)
        return p
    except FileNotFoundError:
        try:
            return latest_checkpoint(p)
        except FileNotFoundError as exc:
            raise FinetuneError(f"policy checkpoint {checkpoint}: not an RLlib checkpoint ({exc})") from exc


def policy_run(checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
    """The algorithm checkpoint to fine-tune and its run's info; FinetuneError unless an offline
    export-domain run's."""
    ckpt = _checkpoint_dir(checkpoint)
    info = run_info_of(ckpt, "policy checkpoint")
    algorithm = str(info.get("algorithm", "")).upper()
    if algorithm not in OFFLINE_ALGORITHMS and algorithm != SUPERVISOR:
        raise FinetuneError(
            f"policy checkpoint {ckpt}: a {algorithm or 'unknown'} run ({info.get('config')}); retraining "
            f"learns from logs, so it fine-tunes offline runs only ({', '.join(OFFLINE_ALGORITHMS)}, "
            f"{SUPERVISOR})"
        )
    if info.get("domain", "export") != "export":
        raise FinetuneError(
            f"policy checkpoint {ckpt}: a {info.get('domain')!r} run, not an export-domain one"
        )
    return ckpt, info


def model_run(checkpoint: str | Path) -> tuple[Path, dict[str, Any]]:
    """The forward-model checkpoint to fine-tune and its run's info; FinetuneError otherwise."""
    from envs.dynamics.model_env import resolve_model_checkpoint
    from rllib_configs.forward_model import ALGORITHM

    if not Path(checkpoint).exists():
        raise FinetuneError(f"forward-model checkpoint {checkpoint}: not found")
    try:
        ckpt = resolve_model_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise FinetuneError(f"forward-model checkpoint {exc}") from exc
    info = run_info_of(ckpt, "forward-model checkpoint")
    if str(info.get("algorithm", "")).upper() != ALGORITHM:
        raise FinetuneError(
            f"forward-model checkpoint {ckpt}: a {info.get('algorithm')} run, not a forward model's"
        )
    return ckpt, info


def check_overrides(ckpt: Path, info: dict[str, Any], overrides: dict[str, Any]) -> None:
    """KeyError naming the key and the run's config if an override names a key its YAML lacks (for an
    offline supervisor: a key its settings lack)."""
    if str(info.get("algorithm", "")).upper() == SUPERVISOR:
        _supervisor_settings(ckpt, info, overrides)
        return
    _overridden(info["config_yaml"], ckpt, info, overrides)


def _overridden(
    raw: dict[str, Any], ckpt: Path, info: dict[str, Any], overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """``raw`` (the YAML of ``ckpt``'s run, described by ``info``) with ``overrides`` (apply_overrides)."""
    return apply_overrides(raw, overrides or {}, f"{ckpt}'s config ({info.get('config')})")


FINETUNED = ("policy", "forward_model")
"""What :func:`finetune` continues training; each is also the name of its run and of its YAML."""


def _policy_yaml(info: dict[str, Any], configs: Path) -> dict[str, Any]:
    """The policy run's YAML to fine-tune from: without the run's own start, with its normalisation."""
    raw = json.loads(json.dumps(info["config_yaml"]))
    # the run's own start (gridrl.init_from: CQL from BC) is not this run's: it starts from the checkpoint
    (raw.get("gridrl") or {}).pop("init_from", None)
    norm = info.get("normalization")
    if norm:
        configs.mkdir(parents=True, exist_ok=True)
        norm_path = configs / "policy_normalization.json"
        norm_path.write_text(json.dumps(norm, indent=1) + "\n")
        raw = _replace(raw, DATASET_NORMALIZATION, str(norm_path.resolve()))
    return raw


def _supervisor_settings(
    checkpoint: str | Path, info: dict[str, Any], overrides: dict[str, Any] | None
) -> Any:
    """The offline supervisor's settings of ``checkpoint``'s run (its ``gridrl_run.json``, key ``offline``)
    with ``overrides``; KeyError naming a key they lack."""
    from dataclasses import fields

    from envs.config import from_mapping
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig

    settings = dict((info.get("offline") or {}).get("settings") or {})
    known = {f.name for f in fields(OfflineSupervisorConfig)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise KeyError(f"{key}: not a setting of the offline supervisor {checkpoint} "
                           f"({', '.join(sorted(known))})")
        settings[key] = value
    where = f"{checkpoint}: {RUN_INFO} offline.settings"
    return from_mapping(OfflineSupervisorConfig, settings, source=where)


def _relearn_supervisor(
    checkpoint: Path, info: dict[str, Any], dataset: str | Path, storage: Path, seed: int,
    overrides: dict[str, Any] | None,
) -> dict[str, Any]:
    """An offline supervisor (rllib_configs/offline_supervisor.py; ``info`` its run's) is learned again on
    the merged dataset with its run's settings (``overrides``: keys of those settings, e.g. ``margin``):
    its whole fit takes about a minute for a week of logs, so it starts afresh rather than from its Q
    networks."""
    from rllib_configs.offline_supervisor import train

    cfg = _supervisor_settings(checkpoint, info, overrides)
    out = storage / "policy"
    report = train(dataset, out, cfg, seed=seed)
    return {"checkpoint": str((out / "module").resolve()), "init_from": str(Path(checkpoint).resolve()),
            "config": cfg.config, "init": "relearned", "offline": report}


def finetune(
    what: str,
    checkpoint: str | Path,
    dataset: str | Path,
    storage: str | Path,
    configs: str | Path,
    iters: int,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Continue training ``what`` (``policy`` or ``forward_model``, :data:`FINETUNED`) of ``checkpoint`` on
    ``dataset`` for ``iters`` iterations (module docstring): the run STORAGE/WHAT, its YAML (the checkpoint's
    run's with ``overrides``) written to CONFIGS/WHAT.yaml. Returns run_training's summary plus ``init_from``
    (the checkpoint), ``config`` (the YAML written) and, for the policy, ``init``: "module" (the whole
    RLModule, the same algorithm) or "policy" (its policy networks only: an override changed the algorithm).
    """
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training

    if what not in FINETUNED:
        raise ValueError(f"finetune: {what!r} is not one of {FINETUNED}")
    configs = Path(configs)
    ckpt, info = policy_run(checkpoint) if what == "policy" else model_run(checkpoint)
    if what == "policy" and str(info.get("algorithm", "")).upper() == SUPERVISOR:
        return _relearn_supervisor(ckpt, info, dataset, Path(storage), seed, overrides)
    raw = _policy_yaml(info, configs) if what == "policy" else info["config_yaml"]
    configs.mkdir(parents=True, exist_ok=True)
    path = configs / f"{what}.yaml"
    path.write_text(yaml.safe_dump(_overridden(raw, ckpt, info, overrides), sort_keys=False))
    spec = load_train_config(path, dataset=str(dataset))
    init_from: str | None = str(ckpt)
    extra = {}
    if what == "policy":
        same = spec.algorithm == str(info["algorithm"]).upper()
        if same:  # the whole module through a callback; else its policy networks only (init_from)
            spec.algo_config.callbacks(
                on_algorithm_init=functools.partial(init_module_from_checkpoint, checkpoint=str(ckpt))
            )
            init_from = None
        extra = {"init": "module" if same else "policy"}
    opts = RunOptions(storage_path=Path(storage), seed=seed, stop_iters=iters, name=what, init_from=init_from)
    summary = run_training(spec, opts)
    return {**summary, "init_from": str(ckpt.resolve()), "config": str(path.resolve()), **extra}
