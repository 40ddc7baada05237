"""Retraining a deployed bundle on new logs (``gridrl retrain``): seed 000's loop, under the promotion rule.

``retrain(OLD, logs, D, DIR)``:

1. **Merge.** The new log folders (``gridrl data generate`` folders, an operator's exports, Serve's
   shadow or production logs ``LOG_DIR/raw/<site_id>``) are merged into the dataset D, built into
   ``DIR/dataset`` (offline_data/extend.py: D's own raw folders and settings, every row once; D itself is
   left as it was).
2. **Fine-tune** the forward model and the policy from their previous checkpoints on the merged dataset,
   for small budgets (rllib_configs/finetune.py, through the one runner; runs under ``DIR/runs``).
3. **Judge** the new policy (its candidate bundle's ONNX graph, parity-checked at export) and the old
   bundle's controller on the same validation days (envs/promotion.py: one seed, every weather in turn),
   in the dataset's site's simulator, or with the fine-tuned forward model (``judge="model"``, for a site
   without one: its verdict carries its trust). The new policy **wins** if it beats the PI by the rule
   (margin, import, violations, trust) and, where the old bundle is not the PI itself, it also beats the
   old controller by the same rule with the old controller as the incumbent. Judged with the simulator, the
   fine-tuned forward model's verdict on the new policy is reported too, for information.
4. **Ship or refuse.** If it wins, the bundle goes to ``DIR/bundle``, its manifest carrying a ``retrain``
   section (the old bundle, the policy and forward-model checkpoints, the dataset, the verdict). Otherwise
   no bundle is written, the candidate is deleted, and the old bundle stays as it was. ``DIR/report.json``
   holds the verdicts and ``shipped`` in both cases.

**Where the checkpoints come from** (:func:`resolve_lineage`), first found wins:

* the flags (``policy_checkpoint``, ``model_checkpoint``);
* the old bundle's manifest: ``training.checkpoint`` (a policy bundle's), ``retrain.forward_model`` (a
  bundle written by this loop);
* the ``report.json`` of the run that wrote the bundle, beside it (``OUT/bundle`` and ``OUT/report.json``
  of ``gridrl pipeline`` or of this loop), if its ``bundle`` is this bundle: ``policy`` / ``cql`` and
  ``forward_model`` checkpoints (``cql``: reports of the pipeline before residual IQL). A PI bundle the
  pipeline shipped is fine-tuned from the policy the rule refused.

Every check on the inputs (:func:`check_inputs`) runs before anything is written or Ray starts; a problem is
a :class:`RetrainError` naming the file and the field, or the flag.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.actions import to_watts
from envs.config import to_mapping
from envs.controllers import PIConfig
from envs.promotion import PromotionConfig, Verdict, decide
from offline_data.progress import Stages
from serve.bundle import MANIFEST, Bundle, BundleError, ControllerPolicy, load_bundle, write_manifest

REPORT = "report.json"
BUNDLE_DIR = "bundle"
CANDIDATE_DIR = ".candidate_bundle"
JUDGES = ("simulator", "model")


class RetrainError(ValueError):
    """An input ``gridrl retrain`` refuses; the message names the file and field, or the flag."""


@dataclass(frozen=True)
class RetrainConfig:
    """Budgets and the rule of one retrain (every field has its default here; the CLI sets them)."""

    policy_iters: int = 2
    """Training iterations of the policy's fine-tune (updates per iteration: its config's
    ``offline_data.dataset_num_iters_per_learner``)."""
    model_iters: int = 1
    """Training iterations of the forward model's fine-tune (``training.steps_per_iter`` steps each)."""
    policy_overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted keys of the policy's training YAML to change (``training.actor_lr``...)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted keys of the forward model's YAML to change (``training.steps_per_iter``)."""
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    """The rule and its validation days."""
    judge: str = "simulator"
    """Who judges: the site's ``simulator``, or the fine-tuned forward ``model``."""
    seed: int = 0
    """Seeds the fine-tunes, the candidate's parity states and the validation days."""

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"judge: one of {', '.join(JUDGES)}, got {self.judge!r}")
        if self.policy_iters < 1 or self.model_iters < 1:
            raise ValueError("policy_iters, model_iters: must be >= 1")


@dataclass
class Lineage:
    """The checkpoints the fine-tunes start from, and where each was found."""

    policy: str
    policy_from: str
    model: str
    model_from: str


@dataclass
class Inputs:
    """What :func:`check_inputs` found: the loaded old bundle, the lineage, the dataset's manifest."""

    bundle: Bundle
    lineage: Lineage
    dataset: Path
    dataset_manifest: dict[str, Any]
    site: str
    logs: list[Path]


# --- the inputs


def _sibling_report(bundle: Bundle) -> tuple[Path, dict[str, Any]] | None:
    """The report.json of the run that wrote ``bundle`` (beside it, naming it as its ``bundle``)."""
    path = bundle.path.resolve().parent / REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not report.get("bundle"):
        return None
    named = report["bundle"]
    named = named.get("bundle") if isinstance(named, dict) else named
    if not named or Path(str(named)).resolve() != bundle.path.resolve():
        return None
    return path, report


def _checkpoint_in(report: dict[str, Any], *keys: str) -> tuple[str, str] | None:
    for key in keys:
        entry = report.get(key)
        if isinstance(entry, dict) and entry.get("checkpoint"):
            return str(entry["checkpoint"]), key
    return None


def resolve_lineage(bundle: Bundle, policy_checkpoint: str | None, model_checkpoint: str | None) -> Lineage:
    """The policy and forward-model checkpoints to fine-tune (module docstring's order); RetrainError
    naming where it looked otherwise."""
    mpath = bundle.path / MANIFEST
    training = bundle.manifest.get("training") or {}
    retrain = bundle.manifest.get("retrain") or {}
    sibling = _sibling_report(bundle)
    found: dict[str, tuple[str, str]] = {}
    if policy_checkpoint:
        found["policy"] = (policy_checkpoint, "--policy-checkpoint")
    elif isinstance(training, dict) and training.get("checkpoint"):
        found["policy"] = (str(training["checkpoint"]), f"{mpath}: training.checkpoint")
    elif sibling and (hit := _checkpoint_in(sibling[1], "policy", "cql")):
        found["policy"] = (hit[0], f"{sibling[0]}: {hit[1]}.checkpoint")
    if model_checkpoint:
        found["model"] = (model_checkpoint, "--model-checkpoint")
    elif isinstance(retrain, dict) and retrain.get("forward_model"):
        found["model"] = (str(retrain["forward_model"]), f"{mpath}: retrain.forward_model")
    elif sibling and (hit := _checkpoint_in(sibling[1], "forward_model")):
        found["model"] = (hit[0], f"{sibling[0]}: {hit[1]}.checkpoint")
    looked = f"{mpath} (training.checkpoint, retrain.forward_model) nor a report.json beside it"
    if "policy" not in found:
        what = "controller pi: no policy" if bundle.controller == "pi" else f"controller {bundle.controller}"
        raise RetrainError(
            f"{mpath}: {what} checkpoint is recorded, neither in {looked}: pass --policy-checkpoint "
            "(the checkpoint to fine-tune)"
        )
    if "model" not in found:
        raise RetrainError(
            f"{mpath}: no forward-model checkpoint is recorded, neither in {looked}: pass --model-checkpoint"
        )
    for what, (path, where) in found.items():
        if not Path(path).exists():
            raise RetrainError(f"{where}: {path} is not there (pass --{what}-checkpoint)")
    return Lineage(found["policy"][0], found["policy"][1], found["model"][0], found["model"][1])


def _dataset_site(dataset: Path, manifest: dict[str, Any]) -> str:
    site = (manifest.get("config") or {}).get("site_resolved") or (manifest.get("site") or {}).get("path")
    if not site or not Path(site).is_file():
        raise RetrainError(
            f"{dataset / 'manifest.json'}: config.site_resolved names site file {site!r}, which is not there "
            "(the action scale and the simulator that judges come from it)"
        )
    return str(site)


def check_site(bundle: Bundle, dataset: Path, site_file: str) -> None:
    """The dataset's site is the bundle's (name and control settings); RetrainError naming both."""
    from envs.site import load_site

    site = load_site(site_file)
    mine = bundle.manifest.get("site") or {}
    theirs = {"name": site.name, "control": to_mapping(site.control)}
    if mine.get("name") != theirs["name"] or mine.get("control") != theirs["control"]:
        diff = [k for k in sorted(set(mine.get("control") or {}) | set(theirs["control"]))
                if (mine.get("control") or {}).get(k) != theirs["control"].get(k)]  # fmt: skip
        detail = f"; control differs in {', '.join(diff)}" if diff else ""
        raise RetrainError(
            f"--dataset {dataset}: built from the logs of site {site.name!r} ({site_file}), but the bundle "
            f"{bundle.path / MANIFEST} (site) was made for site {mine.get('name')!r}{detail}: retrain a "
            "bundle on its own site's logs"
        )


def _check_logs_site(logs: Sequence[str | Path], dataset: Path, site_file: str) -> None:
    """A log folder whose site.yaml is another site than the dataset's is refused, naming both."""
    from envs.site import load_site

    site = load_site(site_file)
    for folder in map(Path, logs):
        held = folder / "site.yaml"
        if held.is_file() and (theirs := load_site(held)) != site:
            raise RetrainError(
                f"--logs {folder}: holds site {theirs.name!r} ({held}), but the dataset {dataset} is of site "
                f"{site.name!r} ({dataset / 'manifest.json'}: config.site_resolved): merge a site's logs "
                "into its own dataset"
            )


def _origin(lineage: Lineage, exc: Exception) -> str:
    """Where the checkpoint an error is about was found (a flag, a manifest field, a report)."""
    return (
        f"from {lineage.model_from}"
        if str(exc).startswith("forward-model")
        else f"from {lineage.policy_from}"
    )


def check_inputs(
    bundle: str | Path,
    logs: Sequence[str | Path],
    dataset: str | Path,
    policy_checkpoint: str | None = None,
    model_checkpoint: str | None = None,
    cfg: RetrainConfig | None = None,
) -> Inputs:
    """Every check that needs no training: the old bundle loads (hashes, state spec, ONNX), the checkpoints
    to fine-tune are found and are runs of an offline algorithm and of a forward model, the dataset is one
    and its raw folders are there, the new logs are raw logs of the dataset's site, and the dataset's site
    is the bundle's. Nothing is written."""
    from offline_data.build import BuildError
    from offline_data.extend import read_dataset_manifest, source_folders
    from offline_data.rawio import RawLogError
    from offline_data.sources import discover_all, resolve_site
    from rllib_configs.finetune import FinetuneError, check_overrides, model_run, policy_run

    try:
        old = load_bundle(bundle)
    except BundleError as exc:
        raise RetrainError(f"--bundle: {exc}") from exc
    data = Path(dataset)
    try:
        manifest = read_dataset_manifest(data)
        raws = source_folders(data, manifest)
    except BuildError as exc:
        raise RetrainError(str(exc)) from exc
    site = _dataset_site(data, manifest)
    check_site(old, data, site)
    if not logs:
        raise RetrainError("--logs: name at least one folder of new logs")
    try:
        discover_all([Path(p) for p in logs])
        _check_logs_site(logs, data, site)
        resolve_site(site, [*raws, *[Path(p) for p in logs]])
    except RawLogError as exc:
        raise RetrainError(f"--logs: {exc}") from exc
    lineage = resolve_lineage(old, policy_checkpoint, model_checkpoint)
    cfg = cfg or RetrainConfig()
    try:
        check_overrides(*policy_run(lineage.policy), cfg.policy_overrides)
        check_overrides(*model_run(lineage.model), cfg.model_overrides)
    except FinetuneError as exc:
        raise RetrainError(f"{exc} ({_origin(lineage, exc)})") from exc
    except KeyError as exc:  # an override of a key the run's YAML does not have
        raise RetrainError(f"--policy-set/--model-set: {exc.args[0]}") from exc
    return Inputs(old, lineage, data, manifest, site, [Path(p) for p in logs])


# --- judging


class BundleController:
    """A loaded bundle's controller as an export-domain controller (targets in W), without the safety
    wrapper, as the promotion rule judges the pipeline's policy: an ONNX graph on batches, or the baseline
    controller with the bundle's parameters."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.name = bundle.name
        self.policy = bundle.make_policy()
        self.max_w = bundle.max_power_per_phase_w

    def reset(self, batch: int = 1) -> None:
        if isinstance(self.policy, ControllerPolicy):
            self.policy.controller.reset(batch)

    def act(self, obs: np.ndarray) -> np.ndarray:
        if isinstance(self.policy, ControllerPolicy):
            return self.policy.controller.act(obs)
        return to_watts(self.policy.act_unit(obs), self.max_w)


def is_default_pi(bundle: Bundle) -> bool:
    """A PI bundle with the PI's default gains: the rule's own incumbent."""
    return bundle.controller == "pi" and (bundle.manifest.get("params") or {}) == to_mapping(PIConfig())


def versus_incumbent(new: Verdict, old: Verdict, config: PromotionConfig, name: str) -> Verdict:
    """The rule with the old controller as the incumbent: the new policy's and the old controller's totals
    on the same validation days (both judged against the PI there), the lower trust of the two."""
    where = f"the same {len(new.cases)} validation case(s)" if new.cases else "the same validation days"
    detail = new.trust_detail if new.trust <= old.trust else old.trust_detail
    trust = min(new.trust, old.trust)
    return decide(new.candidate, old.candidate, config, new.judge, trust, detail, None, where, name,
                  incumbent="the old bundle's controller")  # fmt: skip


def judge(controller: Any, name: str, cfg: RetrainConfig, site: str, dataset: Path, model: str) -> Verdict:
    """``controller`` against the PI on the validation days of ``cfg.seed``, by ``cfg.judge``."""
    if cfg.judge == "simulator":
        from envs.promotion import judge_in_simulator

        return judge_in_simulator(controller, site, cfg.promotion, cfg.seed, name=name)
    from envs.dynamics.evaluator import judge_with_model

    return judge_with_model(controller, model, dataset, cfg.promotion, cfg.seed, name=name)


def decision(new_vs_pi: Verdict, new_vs_old: Verdict | None) -> tuple[bool, str]:
    """Whether the new policy wins, and why: it must beat the PI and, where the old bundle's controller is
    not the PI (``new_vs_old`` given), that controller too (both verdicts' reasons where both count)."""
    if not new_vs_pi.promoted:
        return False, new_vs_pi.reason
    if new_vs_old is None:
        return True, new_vs_pi.reason
    if not new_vs_old.promoted:
        return False, f"{new_vs_pi.reason}; but {new_vs_old.reason}"
    return True, f"{new_vs_pi.reason}; and {new_vs_old.reason}"


# --- the loop


def _export_candidate(checkpoint: str, out: Path, seed: int) -> Bundle:
    from serve.bundle import export_checkpoint

    shutil.rmtree(out, ignore_errors=True)
    export_checkpoint(checkpoint, out, seed=seed)
    return load_bundle(out)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (a manifest is strict JSON)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _ship(candidate: Path, out: Path, record: dict[str, Any], validation: dict[str, Any]) -> Bundle:
    """Seal the candidate with its ``retrain`` record and the validation metrics, and move it to ``out``."""
    manifest = json.loads((candidate / MANIFEST).read_text())
    manifest.pop("files", None)
    manifest.pop("manifest_sha256", None)
    manifest["training"] = {**(manifest.get("training") or {}), "evaluation": _finite(validation)}
    manifest["retrain"] = record
    write_manifest(candidate, manifest)
    candidate.rename(out)
    return load_bundle(out)


def retrain(
    inputs: Inputs, out: str | Path, cfg: RetrainConfig, stages: Stages | None = None,
    command_line: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the loop (module docstring) into ``out`` (new or empty; Ray already started); returns the report,
    also written to ``out/report.json``."""
    from offline_data.extend import extend_dataset
    from rllib_configs.finetune import finetune

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = stages or Stages(7, prefix="[retrain]")
    t0 = time.perf_counter()
    old, lineage = inputs.bundle, inputs.lineage
    merged = stages.run("merge the new logs into the dataset", extend_dataset, inputs.dataset, inputs.logs,
                        out / "dataset", cfg.seed, False, command_line)  # fmt: skip
    merged.pop("manifest")
    dataset = out / "dataset"
    where = (dataset, out / "runs", out / "configs")
    model = stages.run("fine-tune the forward model", finetune, "forward_model", lineage.model, *where,
                       cfg.model_iters, cfg.seed, cfg.model_overrides)  # fmt: skip
    policy = stages.run("fine-tune the policy", finetune, "policy", lineage.policy, *where, cfg.policy_iters,
                        cfg.seed, cfg.policy_overrides)  # fmt: skip
    candidate_dir = out / CANDIDATE_DIR
    candidate = stages.run("export the new policy as a candidate bundle (ONNX parity-checked)",
                           _export_candidate, policy["checkpoint"], candidate_dir, cfg.seed)  # fmt: skip
    new_name, old_name = "the retrained policy", f"the old bundle's controller ({old.controller})"
    against = "the PI" if is_default_pi(old) else "the PI and the old bundle's controller"
    judge_args = (cfg, inputs.site, dataset, model["checkpoint"])

    def judge_both() -> dict[str, Any]:
        new_vs_pi = judge(BundleController(candidate), new_name, *judge_args)
        if is_default_pi(old):
            return {"new_vs_pi": new_vs_pi, "old_vs_pi": None, "new_vs_old": None}
        old_vs_pi = judge(BundleController(old), old_name, *judge_args)
        return {"new_vs_pi": new_vs_pi, "old_vs_pi": old_vs_pi,
                "new_vs_old": versus_incumbent(new_vs_pi, old_vs_pi, cfg.promotion, new_name)}  # fmt: skip

    verdicts = stages.run(f"promotion rule: the new policy vs {against} ({cfg.judge})", judge_both)
    info = None
    if cfg.judge == "simulator":
        from envs.dynamics.evaluator import judge_with_model

        info = stages.run(
            "the fine-tuned forward model's verdict on the new policy (for information)",
            lambda: judge_with_model(BundleController(candidate), model["checkpoint"], dataset, cfg.promotion,
                                     cfg.seed, None, name=new_name),
        )  # fmt: skip
    wins, reason = decision(verdicts["new_vs_pi"], verdicts["new_vs_old"])
    record = {
        "from_bundle": str(old.path.resolve()),
        "from_manifest_sha256": old.manifest.get("manifest_sha256"),
        "policy": str(Path(policy["checkpoint"]).resolve()),
        "policy_init_from": policy["init_from"],
        "forward_model": str(Path(model["checkpoint"]).resolve()),
        "forward_model_init_from": model["init_from"],
        "dataset": str(dataset),
        "logs": [str(p.resolve()) for p in inputs.logs],
        "judge": cfg.judge,
        "reason": reason,
    }
    if wins:
        bundle = stages.run("write the new bundle", _ship, candidate_dir, out / BUNDLE_DIR, record,
                            verdicts["new_vs_pi"].candidate)  # fmt: skip
        shipped = {"controller": "policy", "reason": reason, "bundle": str(bundle.path)}
    else:
        stages.run("refused: delete the candidate, keep the old bundle", shutil.rmtree, candidate_dir)
        shipped = {
            "controller": "old",
            "reason": f"{reason}; nothing is written: the old bundle stays ({old.path.resolve()}, "
            f"controller {old.controller})",
            "bundle": str(old.path.resolve()),
        }
    report = {
        "command_line": command_line or [],
        "seed": cfg.seed,
        "out": str(out),
        "settings": {**asdict(cfg), "promotion": asdict(cfg.promotion)},
        "old_bundle": {
            "path": str(old.path.resolve()),
            "controller": old.controller,
            "algorithm": old.manifest.get("algorithm"),
            "manifest_sha256": old.manifest.get("manifest_sha256"),
        },  # fmt: skip
        "lineage": asdict(lineage),
        "dataset": {"from": str(inputs.dataset.resolve()), "merged": str(dataset), **merged},
        "forward_model": model,
        "policy": policy,
        "promotion": {
            "judge": cfg.judge,
            **{k: (v.to_dict() if v is not None else None) for k, v in verdicts.items()},
            "forward_model": info.to_dict() if info is not None else None,
        },
        "shipped": shipped,
        "bundle": str(out / BUNDLE_DIR) if wins else None,
        "stage_s": stages.timings,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2, default=str))
    return report
