"""Training the forward model: a plain trainer, the Tune function trainable, and the runner's branch for it.

The model itself (the network, its data windows, its evaluation) is envs/dynamics/'s, because the
model-based env steps it; training it through Tune is training's, so it lives here beside the runner.

``gridrl train --config rllib_configs/export/forward_model.yaml --dataset DS`` reaches
:func:`run_model_training` through rllib_configs/runner.py (``algorithm: forward_model``), with the same
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

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.config import ConfigError, from_mapping, load_yaml, to_mapping
from envs.dynamics.data import SplitData, delta_std, load_normalizer, load_split, lookahead, site_path
from envs.dynamics.evaluate import kstep_metrics, teacher_forced_loss
from envs.dynamics.model import ForwardModel, ModelConfig, pick_device, train_step
from envs.dynamics.rollout import HISTORY_S
from envs.state_spec import FEAT, FEATURE_NAMES
from rllib_configs.loader import REPO_ROOT, GridrlSettings, TrainSpec, substitute

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


def load_model_spec(path: Path, data: dict[str, Any], raw: dict[str, Any], dataset: str | None) -> Any:
    """The loader's branch for ``algorithm: forward_model`` (rllib_configs/loader.py): a TrainSpec.

    ``data`` is the YAML with ``${...}`` substituted, ``raw`` as read. Errors name the file and the key.
    """
    settings = from_mapping(GridrlSettings, data.get("gridrl", {}), source=path, path="gridrl")
    body = {k: v for k, v in data.items() if k not in ("algorithm", "gridrl")}
    spec = from_mapping(ForwardModelSpec, body, source=path)
    if "${dataset}" in spec.training.dataset:
        raise ConfigError(path, "training.dataset", "uses ${dataset}: pass --dataset DIR")
    if not (Path(spec.training.dataset) / "normalization.json").is_file():
        raise ConfigError(
            path, "training.dataset", f"{spec.training.dataset}: not a dataset (no normalization.json)"
        )
    return TrainSpec(path=path, algorithm=ALGORITHM, algo_config=spec, settings=settings, raw=raw)


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


def _stop(opts: Any) -> dict[str, float]:
    stop: dict[str, float] = {}
    if opts.stop_iters is not None:
        stop["training_iteration"] = opts.stop_iters
    if opts.stop_timesteps is not None:
        stop[SAMPLES_KEY] = opts.stop_timesteps
    if opts.time_budget_s is not None:
        stop["time_total_s"] = opts.time_budget_s
    return stop or {"training_iteration": 10}


def run_model_training(spec: Any, opts: Any) -> dict[str, Any]:
    """The runner's branch for ``algorithm: forward_model``: train through Tune; returns the summary."""
    from ray import tune

    from rllib_configs import storage
    from rllib_configs.policy import write_run_info
    from rllib_configs.runner import experiment_dir, progress_callback, summary_metrics

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    exp_dir = experiment_dir(spec, opts)
    # The trial reserves the CPUs its torch threads use: more threads than reserved CPUs oversubscribe the
    # cores when Ray schedules other work beside it.
    resources = tune.with_resources(
        forward_model_trainable,
        {"cpu": spec.algo_config.training.num_threads, "gpu": 1 if torch.cuda.is_available() else 0},
    )
    init_from = opts.init_from or spec.settings.init_from
    param_space = {
        "spec": to_mapping(spec.algo_config),
        "seed": opts.seed,
        "stop": _stop(opts),
        "checkpoint_every": opts.checkpoint_every,
        "init_from": str(Path(init_from).resolve()) if init_from else None,
    }
    t0 = time.perf_counter()
    if opts.resume:
        if not tune.Tuner.can_restore(exp_dir):
            raise FileNotFoundError(f"--resume: no run to resume at {exp_dir}")
        tuner = tune.Tuner.restore(exp_dir, trainable=resources, resume_errored=True)
    else:
        if storage.exists(exp_dir):
            raise FileExistsError(f"{exp_dir} exists: pass --resume to continue it, or --name for a new run")
        parent, name = storage.parent_and_name(exp_dir)
        write_run_info(
            exp_dir,
            {
                "algorithm": ALGORITHM,
                "domain": spec.settings.domain,
                "config": str(spec.path.resolve()),
                "config_yaml": spec.raw,
                "dataset": str(Path(spec.algo_config.training.dataset).resolve()),
                "seed": opts.seed,
                "init_from": param_space["init_from"],
            },
        )
        run_config = tune.RunConfig(
            name=name,
            storage_path=parent,
            stop=_stop(opts),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            callbacks=[progress_callback()],
            verbose=0,
        )
        tuner = tune.Tuner(resources, param_space=param_space, run_config=run_config)
    result = tuner.fit()[0]
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    metrics = result.metrics or {}
    return {
        "checkpoint": result.checkpoint.path,
        "algorithm": ALGORITHM,
        "config": str(spec.path),
        "domain": spec.settings.domain,
        "seed": opts.seed,
        "trial_dir": result.path,
        "wall_s": round(time.perf_counter() - t0, 1),
        "metrics": {
            **summary_metrics(metrics),
            **{
                k: metrics[k]
                for k in ("val_mse", "val_export_mae_w", "val_persistence_mse", "samples_per_s")
                if k in metrics
            },
        },
    }


def load_spec_file(path: str | Path, dataset: str | None = None) -> Any:
    """Load forward_model.yaml directly (tests; the CLI goes through rllib_configs/loader.py)."""
    p = Path(path)
    raw = load_yaml(p)
    variables = {"repo": str(REPO_ROOT), **({"dataset": str(Path(dataset).resolve())} if dataset else {})}
    return load_model_spec(p, substitute(raw, variables), raw, dataset)


def pipeline_stage(
    dataset: str | Path, storage_path: str | Path, seed: int = 0, stop_iters: int = 8,
    config: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``gridrl pipeline``'s model stage: train forward_model.yaml (or ``config``) on ``dataset`` through the
    runner, then score it on the test split (``gridrl evaluate-model``'s report, in
    ``STORAGE/forward_model/evaluation``).

    Returns:
        The training summary with ``evaluation`` (the criteria rows and whether all passed) added.
    """
    from envs.dynamics.evaluate import evaluate_model, write_report
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training

    config = config or REPO_ROOT / "rllib_configs/export/forward_model.yaml"
    spec = load_train_config(config, dataset=str(dataset))
    options = RunOptions(
        storage_path=Path(storage_path), seed=seed, stop_iters=stop_iters, name="forward_model"
    )
    summary = run_training(spec, options)
    from envs.site import load_site

    max_w = load_site(site_path(dataset)).control.max_power_per_phase_w
    model = ForwardModel.load(summary["checkpoint"])
    # a sample of the test split's windows: all of a week's 100k k-step windows take minutes on 2 cores
    report = evaluate_model(model, load_split(dataset, "test"), max_w, windows=20_000, rollouts=500,
                            rng=np.random.default_rng(seed))
    write_report(report, Path(storage_path) / "forward_model" / "evaluation")
    return {**summary, "evaluation": {"passed": report["passed"], "criteria": report["criteria"]}}
