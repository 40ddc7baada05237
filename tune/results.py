"""What a sweep leaves behind: the results table, a PNG, and the promoted best checkpoint.

Promotion copies the best trial's best checkpoint to ``<storage>/best/<domain>/<algo>/`` with
``promotion.json`` (metric, value, mode, params, the sweep's id and trial) and the run's
``gridrl_run.json``, so ``gridrl evaluate`` and ``gridrl export`` take that path. A new best replaces the
old one only if it is better on the same metric; otherwise it says so and leaves the old one.

Where it promotes an export-domain checkpoint, ``promotion.json`` also records the promotion rule's verdict
on its policy against the PI (``rule``: envs/promotion.py, in the simulator of the run's site, on the
validation days of ``rule``'s config): the sweep's metric picks the best trial, the rule says whether that
policy would ship. The verdict is recorded, not enforced: ``best/`` holds checkpoints, not bundles, and
what ships is decided where a bundle is made (``gridrl pipeline``, ``gridrl retrain``).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rllib_configs.policy import RUN_INFO

PROMOTION = "promotion.json"


def _flat_params(config: dict[str, Any] | None, names: dict[str, str]) -> dict[str, Any]:
    config = config or {}  # a trial that never started (sweep interrupted with Ctrl-C) has no config
    return {names.get(k, k): config.get(k) for k in names}


def _number(v: Any) -> float | None:
    """A metric's value, or None where it is missing or NaN."""
    return None if v is None or math.isnan(float(v)) else float(v)


def write_table(grid: Any, exp_dir: Path, metric: str, names: dict[str, str], mode: str = "max") -> Path:
    """results.csv and results.parquet: one row per trial, its params, the metric's last value and its best
    by ``mode``.

    Tune gives both: the best from ``ResultGrid.get_dataframe(filter_metric, filter_mode)`` (each trial's
    best result); the last from the trial's history (``Result.metrics_dataframe``), not from
    ``get_dataframe()``, whose last row may lack a metric reported every few iterations (evaluation). A trial
    that never reported keeps its row, with empty values."""
    import polars as pl

    best_df = grid.get_dataframe(filter_metric=metric, filter_mode=mode)  # pandas; only trials that reported
    best = {}
    if not best_df.empty and metric in best_df:
        best = dict(zip(best_df["trial_id"], best_df[metric], strict=True))
    rows = []
    for r in grid:
        hist = r.metrics_dataframe
        series = hist[metric].dropna() if hist is not None and metric in hist else ()
        trial_id = (r.metrics or {}).get("trial_id")
        rows.append({
            "trial_id": trial_id,
            "status": "ERROR" if r.error else "OK",
            "iterations": (r.metrics or {}).get("training_iteration"),
            f"last/{metric}": _number(series.iloc[-1]) if len(series) else None,
            f"best/{metric}": _number(best.get(trial_id)),
            **{f"param/{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in _flat_params(r.config or {}, names).items()},
            "path": r.path,
        })
    df = pl.DataFrame(rows, schema_overrides={f"last/{metric}": pl.Float64, f"best/{metric}": pl.Float64})
    df.write_csv(exp_dir / "results.csv")
    df.write_parquet(exp_dir / "results.parquet")
    return exp_dir / "results.csv"


def plot_sweep(grid: Any, exp_dir: Path, metric: str, best: Any, names: dict[str, str]) -> Path:
    """PNG: the metric of every trial over its iterations, with the best trial's parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for r in grid:
        hist = r.metrics_dataframe
        if hist is None or metric not in hist:
            continue
        lw, alpha = (2.5, 1.0) if best is not None and r.path == best.path else (0.8, 0.5)
        ax.plot(hist["training_iteration"], hist[metric], lw=lw, alpha=alpha)
    ax.set_xlabel("training iteration")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if best is not None:
        text = "\n".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                         for k, v in _flat_params(best.config, names).items())
        ax.text(1.01, 1.0, "best trial\n" + text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_title(f"{len(list(grid))} trials: {metric}")
    fig.tight_layout()
    out = exp_dir / "sweep.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _better(new: float, old: float, mode: str) -> bool:
    return new > old if mode == "max" else new < old


def rule_verdict(checkpoint: str | Path, config: Any, seed: int = 0) -> dict[str, Any]:
    """The promotion rule's verdict on ``checkpoint``'s policy against the PI (``config``: an
    envs.promotion.PromotionConfig), in the simulator of the run's site; export-domain runs only."""
    from envs.controllers import PolicyController
    from envs.promotion import judge_in_simulator
    from envs.site import load_site
    from rllib_configs.policy import load_policy

    policy = load_policy(checkpoint)
    domain = policy.info.get("domain", "export")
    if domain != "export":
        why = f"the promotion rule judges export-domain policies, not {domain!r} ones"
        return {"judged": False, "reason": why}
    site = (policy.info.get("env_config") or {}).get("site")
    controller = PolicyController(policy, load_site(site).control.max_power_per_phase_w)
    verdict = judge_in_simulator(controller, site, config, seed, name="the sweep's best policy")
    return {"judged": True, **verdict.to_dict()}


def promote(grid: Any, exp_dir: Path, storage: Path, domain: str, algo: str, metric: str, mode: str,
            names: dict[str, str], rule: Any = None, seed: int = 0) -> dict[str, Any]:
    """Promote the sweep's best checkpoint if it beats the current best on ``metric``; where it does, record
    the promotion rule's verdict against the PI when ``rule`` (a PromotionConfig) is given."""
    best = grid.get_best_result(metric=metric, mode=mode, scope="all", filter_nan_and_inf=True)
    ckpt = best.get_best_checkpoint(metric, mode) if best else None
    if best is None or ckpt is None:
        return {"promoted": False, "reason": "no trial produced a checkpoint with the metric"}
    hist = best.metrics_dataframe
    value = float(hist[metric].max() if mode == "max" else hist[metric].min())
    target = Path(storage).resolve() / "best" / domain / algo.lower()
    old = json.loads((target / PROMOTION).read_text()) if (target / PROMOTION).is_file() else None
    record = {
        "metric": metric, "mode": mode, "value": value, "sweep_id": exp_dir.name, "sweep_dir": str(exp_dir),
        "trial_path": best.path, "source_checkpoint": ckpt.path, "params": _flat_params(best.config, names),
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if old is not None and old.get("metric") == metric and not _better(value, float(old["value"]), mode):
        msg = (f"not promoted: the current best ({old['value']:.6g} from {old['sweep_id']}) "
               f"is not beaten by {value:.6g}")
        print(f"[tune] {msg}", file=sys.stderr)
        return {"promoted": False, "reason": msg, "best": str(target), "candidate": record}
    if rule is not None:
        record["rule"] = rule_verdict(ckpt.path, rule, seed)
        print(f"[tune] the promotion rule: {record['rule']['reason']}", file=sys.stderr)
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(ckpt.path, staging / "checkpoint")
    shutil.copy(exp_dir / RUN_INFO, staging / RUN_INFO)
    (staging / "config.json").write_text(json.dumps(best.config, indent=2, default=str))
    (staging / PROMOTION).write_text(json.dumps(record, indent=2, default=str))
    # Swap by renames: a crash in between leaves the old best whole in <algo>.previous, never half-deleted.
    previous = target.with_name(target.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    if old is not None and not math.isnan(float(old["value"])):
        print(f"[tune] promoted: {value:.6g} beats {old['value']:.6g}", file=sys.stderr)
    if "rule" in record:  # the summary line gets the verdict's gist; promotion.json has its numbers
        record["rule"] = {k: record["rule"].get(k) for k in ("judged", "promoted", "reason")}
    return {"promoted": True, "best": str(target), "checkpoint": str(target / "checkpoint"), **record}
