"""Training the forward model: its config sections, a plain trainer, and the Tune function trainable.

rllib_configs/loader.py reads forward_model.yaml through :func:`load_model_spec` and rllib_configs/runner.py
runs :func:`tune_parts`; this module imports neither (they import it).

The model itself (the network, its data windows, its evaluation) is envs/dynamics/'s, because the
model-based env steps it; training it through Tune is training's, so it lives here beside the runner.

``gridrl train --config rllib_configs/export/forward_model.yaml --dataset DS`` reaches
:func:`forward_model_trainable` through rllib_configs/runner.py (``algorithm: forward_model``), with the same
:class:`~rllib_configs.runner.RunOptions` as every algorithm: storage path, seed, stop criteria (iterations,
time budget; ``--stop-timesteps`` counts training windows), checkpoint cadence, resume, the progress line and
the final JSON summary line with ``checkpoint``.

One iteration = ``steps_per_iter`` optimiser steps (teacher forcing on windows of ``model.context`` seconds,
plus ``model.rollout_steps`` open-loop seconds),
then validation on a fixed sample of val-split windows: the teacher-forced loss (``val_loss``) and k-step
rollouts with the logged actions (``val_mse``, ``val_export_mae_w``), as ``gridrl evaluate-model`` scores.
A checkpoint is a directory with the model (envs/dynamics/model.py ``save``: loadable with torch alone) and
``trainer.pt`` (optimiser and generator state, for an exact resume).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.config import ConfigError, from_mapping, to_mapping
from envs.dynamics.data import SplitData, delta_std, load_normalizer, load_split, lookahead, site_path
from envs.dynamics.evaluate import kstep_metrics, teacher_forced_loss
from envs.dynamics.model import ForwardModel, ModelConfig, pick_device, train_step
from envs.dynamics.rollout import HISTORY_S
from envs.state_spec import FEAT, FEATURE_NAMES

PV_L = [FEAT[f"pv_w_l{p}"] for p in (1, 2, 3)]

ALGORITHM = "FORWARD_MODEL"
MODULE_ID = "forward_model"  # the key under "learners" in reported results (the runner prints its losses)
TRAINER_FILE = "trainer.pt"
SAMPLES_KEY = "num_samples_trained_lifetime"


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` section of forward_model.yaml."""

    dataset: str = "${dataset}"
    """Dataset folder from ``gridrl data build`` (``${dataset}`` = the --dataset flag)."""
    lr: float = 1e-3
    """Adam learning rate."""
    lr_final_fraction: float = 0.1
    """Cosine decay of the learning rate to this fraction of ``lr`` over ``decay_iters`` iterations."""
    decay_iters: int = 30
    """Iterations of the cosine decay (then held at its end value)."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    batch_size: int = 256
    """Windows per optimiser step and ensemble member."""
    steps_per_iter: int = 300
    """Optimiser steps per training iteration."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 = off)."""
    val_windows: int = 20_000
    """Val-split windows scored after each iteration (a fixed, evenly spaced sample)."""
    num_threads: int = 2
    """torch CPU threads of the trial."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.steps_per_iter < 1 or self.val_windows < 1:
            raise ValueError("lr: lr, batch_size, steps_per_iter and val_windows must be > 0")


@dataclass(frozen=True)
class ForwardModelSpec:
    """A forward_model.yaml: ``algorithm: forward_model`` plus these sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def load_model_spec(path: Path, data: dict[str, Any]) -> ForwardModelSpec:
    """The loader's branch for ``algorithm: forward_model`` (rllib_configs/loader.py): the sections other than
    ``algorithm`` and ``gridrl`` (the loader's), checked. ``data`` is the YAML with ``${...}`` substituted.
    Errors name the file and the key."""
    body = {k: v for k, v in data.items() if k not in ("algorithm", "gridrl")}
    spec = from_mapping(ForwardModelSpec, body, source=path)
    if "${dataset}" in spec.training.dataset:
        raise ConfigError(path, "training.dataset", "uses ${dataset}: pass --dataset DIR")
    if not (Path(spec.training.dataset) / "normalization.json").is_file():
        raise ConfigError(
            path, "training.dataset", f"{spec.training.dataset}: not a dataset (no normalization.json)"
        )
    return spec


class Trainer:
    """Trains the ensemble on a dataset, one iteration at a time (no Ray: the trainable and tests use it).

    Args:
        spec: Model and training settings.
        seed: Seeds the initialisation, the batch order and everything else random.
        train, val: Splits (loaded from ``spec.training.dataset`` when None).
    """

    def __init__(
        self,
        spec: ForwardModelSpec,
        seed: int = 0,
        train: SplitData | None = None,
        val: SplitData | None = None,
    ):
        tc = spec.training
        torch.set_num_threads(tc.num_threads)
        self.spec, self.seed = spec, seed
        self.device = pick_device(tc.device)
        self.k = lookahead(tc.dataset)
        self.train = train if train is not None else load_split(tc.dataset, "train")
        self.val = val if val is not None else load_split(tc.dataset, "val")
        norm = load_normalizer(tc.dataset)
        from envs.site import load_site

        self.max_power_w = load_site(site_path(tc.dataset)).control.max_power_per_phase_w
        torch.manual_seed(seed)
        self.model = ForwardModel(
            FEATURE_NAMES,
            norm.mean,
            norm.std,
            delta_std(self.train, norm),
            3,
            self.k,
            spec.model,
            action_scale_w=self.max_power_w,
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.rng = np.random.default_rng(seed)
        self.h = spec.model.context
        self.window = self.h + spec.model.rollout_steps  # teacher-forced context, then the open-loop tail
        self.starts = self.train.window_starts(self.window)
        vs = self.val.rollout_starts(self.k, HISTORY_S)
        self.val_starts = vs[np.linspace(0, len(vs) - 1, min(tc.val_windows, len(vs))).astype(np.int64)]
        self.iteration = 0
        self.samples = 0

    def _lr(self) -> float:
        tc = self.spec.training
        frac = min(self.iteration / max(tc.decay_iters, 1), 1.0)
        return tc.lr * (tc.lr_final_fraction + (1 - tc.lr_final_fraction) * 0.5 * (1 + np.cos(np.pi * frac)))

    def _batch(self) -> dict[str, torch.Tensor]:
        m, b, h = len(self.model.members), self.spec.training.batch_size, self.window
        obs, act, nxt = self.train.window(self.rng.choice(self.starts, m * b), h)
        dev = self.device
        shape = (m, b, h, -1)
        with torch.no_grad():
            z = self.model.normalize(torch.as_tensor(obs, device=dev)).reshape(shape)
            ok = torch.as_tensor(nxt[..., FEATURE_NAMES.index("meter_age_s")] == 0, device=dev)
            tgt, mask = self.model.targets(self.model.normalize(torch.as_tensor(nxt, device=dev)), ok)
        return {
            "z": z,
            "actions": torch.as_tensor(act, device=dev).reshape(shape),
            "target": tgt.reshape(shape),
            "mask": mask.reshape(shape),
            "pv_next": torch.as_tensor(nxt[..., PV_L], device=dev).reshape(shape),
        }

    def train_iteration(self) -> dict[str, Any]:
        """Run ``steps_per_iter`` optimiser steps and validate; returns the iteration's metrics."""
        tc = self.spec.training
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr()
        t0 = time.perf_counter()
        losses = [
            train_step(self.model, self.optimizer, **self._batch(), grad_clip=tc.grad_clip)
            for _ in range(tc.steps_per_iter)
        ]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = tc.steps_per_iter * tc.batch_size * len(self.model.members)
        self.samples += n
        self.iteration += 1
        return {
            "train_loss": float(np.mean(losses)),
            **self.validate(),
            "samples_per_s": n / dt,
            "lr": self._lr(),
            SAMPLES_KEY: self.samples,
        }

    def validate(self) -> dict[str, float]:
        """Teacher-forced loss and k-step rollout metrics on the fixed val windows."""
        kstep = kstep_metrics(self.model, self.val, self.val_starts, self.max_power_w)
        return {
            "val_loss": teacher_forced_loss(self.model, self.val, self.val_starts, self.h),
            "val_mse": kstep["mse"],
            "val_export_mae_w": kstep["export_mae_w"],
            "val_persistence_mse": kstep["persistence_mse"],
        }

    def save(self, directory: str | Path) -> Path:
        d = self.model.save(
            directory,
            extra={
                "seed": self.seed,
                "iteration": self.iteration,
                "max_power_per_phase_w": self.max_power_w,
                "dataset": str(Path(self.spec.training.dataset).resolve()),
                "spec": to_mapping(self.spec),
            },
        )
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "iteration": self.iteration,
                "samples": self.samples,
            },
            Path(d) / TRAINER_FILE,
        )
        return Path(d)

    def init_from(self, checkpoint: str | Path) -> Path:
        """Start from another run's model (fine-tuning, ``gridrl retrain``): its weights and the normalisation
        statistics they were trained with; the optimiser, the learning-rate schedule and the counters start
        afresh. ``checkpoint`` is a model checkpoint or a run directory (its newest checkpoint). Raises
        ValueError naming the checkpoint if its network does not fit this config's (another ``model:``)."""
        from envs.dynamics.model_env import resolve_model_checkpoint

        path = resolve_model_checkpoint(checkpoint)
        theirs = ForwardModel.load(path, self.device).state_dict()
        mine = self.model.state_dict()
        bad = sorted(k for k in set(mine) | set(theirs)
                     if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape)  # fmt: skip
        if bad:
            raise ValueError(
                f"init_from {path}: its network does not fit this config's model section (differing "
                f"parameters: {', '.join(bad[:4])}); fine-tune with the config it was trained with"
            )
        self.model.load_state_dict(theirs)
        return path

    def restore(self, directory: str | Path) -> None:
        loaded = ForwardModel.load(directory, self.device)
        self.model.load_state_dict(loaded.state_dict())
        state = torch.load(Path(directory) / TRAINER_FILE, map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.iteration, self.samples = state["iteration"], state["samples"]


def forward_model_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable; ``config`` = {spec (ForwardModelSpec dict), seed, stop, checkpoint_every,
    init_from (a model checkpoint to start from, or None)}.

    Reports once per iteration; checkpoints every ``checkpoint_every`` iterations and at the last one (the
    trainable knows ``stop`` because function trainables cannot checkpoint at the end on Tune's behalf).
    """
    from ray import tune
    from ray.rllib.utils.metrics import LEARNER_RESULTS

    spec = from_mapping(ForwardModelSpec, config["spec"], source="forward_model_trainable")
    trainer = Trainer(spec, seed=int(config.get("seed", 0)))
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.restore(d)
    elif config.get("init_from"):  # a new run fine-tuning another run's model (a resume restores instead)
        trainer.init_from(config["init_from"])
    stop = config.get("stop", {})
    every = max(int(config.get("checkpoint_every", 1)), 1)
    t_start = time.time()
    while True:
        m = trainer.train_iteration()
        last = (
            trainer.iteration >= stop.get("training_iteration", float("inf"))
            or trainer.samples >= stop.get(SAMPLES_KEY, float("inf"))
            or time.time() - t_start >= stop.get("time_total_s", float("inf"))
        )
        metrics = {
            **m,
            LEARNER_RESULTS: {MODULE_ID: {"train_loss": m["train_loss"], "val_loss": m["val_loss"]}},
        }
        if last or trainer.iteration % every == 0:
            with tempfile.TemporaryDirectory() as d:
                trainer.save(d)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)
        if last:
            return


SUMMARY_METRICS = ("val_mse", "val_export_mae_w", "val_persistence_mse", "samples_per_s")
"""Metrics of an iteration that the run's summary reports besides the runner's (its losses)."""


def tune_parts(spec: Any, opts: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """What rllib_configs/runner.py runs for ``algorithm: forward_model`` (``spec`` a TrainSpec, ``opts`` its
    RunOptions): the trainable with the resources it reserves, its param space, and the run's
    ``gridrl_run.json``. The trainable stops itself at ``opts.stop(SAMPLES_KEY)`` (it checkpoints its last
    iteration: function trainables cannot checkpoint at the end on Tune's behalf)."""
    from ray import tune

    # The trial reserves the CPUs its torch threads use: more threads than reserved CPUs oversubscribe the
    # cores when Ray schedules other work beside it.
    trainable = tune.with_resources(
        forward_model_trainable,
        {"cpu": spec.algo_config.training.num_threads, "gpu": 1 if torch.cuda.is_available() else 0},
    )
    init_from = opts.init_from or spec.settings.init_from
    param_space = {
        "spec": to_mapping(spec.algo_config),
        "seed": opts.seed,
        "stop": opts.stop(SAMPLES_KEY),
        "checkpoint_every": opts.checkpoint_every,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
    }
    run_info = {
        "algorithm": ALGORITHM,
        "domain": spec.settings.domain,
        "config": str(spec.path.resolve()),
        "config_yaml": spec.raw,
        "dataset": str(Path(spec.algo_config.training.dataset).resolve()),
        "seed": opts.seed,
        "init_from": param_space["init_from"],
    }
    return trainable, param_space, run_info
