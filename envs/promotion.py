"""The promotion rule: a learned controller ships only if it beats the site's PI (../shared/DESIGN.md).

A candidate controller and the PI run on the same **validation days**: days neither trained on (training
envs are seeded with small integers, the raw-log generator with its own seed sequence) nor used for the
reported evaluation (scripts/evaluate.py's held-out days come from another seed range). Day ``d`` of seed
``s`` is env seed ``VALIDATION_SEED_OFFSET + s * 10_000 + d`` with weather ``scenarios[d % len]``: every
weather in turn, the day of the year, the clouds, the loads, the EV sessions and the link drawn from the
seed, so no single scenario decides. The candidate is **promoted** only if, over those days together
(envs/metrics.py's metrics of record):

1. its export is lower than the PI's by at least ``margin_pct`` % (default 5 %);
2. its controlled import is at most ``max_import_ratio`` times the PI's (default 1.1; ratio of
   ``import + 0.01 kWh``, as scripts/evaluate.py's criterion), **or** its wasted energy (export +
   controlled import, DESIGN.md's objective at equal weights) is lower than the PI's: pulling from the
   grid is not a way to cut export;
3. it has zero safety violations;
4. the judge is trusted: ``trust >= min_trust`` (default 0.8). The simulator is the site's reference
   (trust 1); the forward model, the judge of offline-only users (envs/dynamics/evaluator.py
   ``judge_with_model``), carries the trust measure described there, which cannot be full for a model that
   fails the seed's criteria.

Otherwise the PI stays: the :class:`Verdict` says which checks failed, with the numbers. The judges are
:func:`judge_in_simulator` (here) and ``envs.dynamics.evaluator.judge_with_model``; both end in
:func:`decide`, so the rule is written once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from envs.controllers import Controller, PIController
from envs.metrics import metrics_of_record, reduction_pct
from envs.profiles import SCENARIOS

# Validation days: a seed range of their own (scripts/evaluate.py's held-out days start at 1_000_000_007,
# the model's rank check's at 2_000_000_011).
VALIDATION_SEED_OFFSET = 3_000_000_019
IMPORT_FLOOR_KWH = 0.01  # added to both imports in the ratio: a PI that imports nothing gives no 0/0


@dataclass(frozen=True)
class PromotionConfig:
    """The rule's thresholds and the validation days it judges on (every field has its default here)."""

    margin_pct: float = 5.0
    """The candidate must export at least this % less than the PI over the validation days."""
    max_import_ratio: float = 1.1
    """Its controlled import at most this many times the PI's (unless its wasted energy falls)."""
    min_trust: float = 0.8
    """A verdict whose judge is trusted less than this (the forward model's trust) promotes nothing."""
    days: int = 5
    """Validation days; day d has weather scenarios[d % len(scenarios)]."""
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    """Weathers the days go through (envs/profiles.py's names)."""
    hours: float = 24.0
    """Hours of each validation day from ``start_h``: whole days by default (night import counts)."""
    start_h: float = 0.0
    """Local hour each day's window starts."""
    model_windows: int = 32
    """Forward-model judge: logged daylight windows of the validation split."""
    model_horizon_s: int = 600
    """Forward-model judge: seconds per window."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin_pct < 100.0:
            raise ValueError(f"margin_pct: must be within [0, 100), got {self.margin_pct}")
        if not self.max_import_ratio >= 1.0:
            raise ValueError(f"max_import_ratio: must be >= 1, got {self.max_import_ratio}")
        if not 0.0 <= self.min_trust <= 1.0:
            raise ValueError(f"min_trust: must be within [0, 1], got {self.min_trust}")
        if self.days < 1:
            raise ValueError(f"days: must be >= 1, got {self.days}")
        if not self.scenarios or any(s not in SCENARIOS for s in self.scenarios):
            raise ValueError(f"scenarios: known are {', '.join(SCENARIOS)}, got {list(self.scenarios)}")
        if not (0.0 < self.hours <= 24.0 and 0.0 <= self.start_h and self.start_h + self.hours <= 24.0):
            raise ValueError(
                f"hours, start_h: the window {self.start_h:g} h + {self.hours:g} h must fit in a day"
            )
        if self.model_windows < 1 or self.model_horizon_s < 1:
            raise ValueError("model_windows, model_horizon_s: must be >= 1")

    def day_scenarios(self) -> list[str]:
        return [self.scenarios[d % len(self.scenarios)] for d in range(self.days)]


@dataclass
class Verdict:
    """The rule's answer: promoted or not, why, and the numbers it was decided on."""

    promoted: bool
    reason: str
    judge: str  # "simulator" or "forward model"
    trust: float
    candidate: dict[str, float]
    pi: dict[str, float]
    checks: list[dict[str, Any]]
    config: dict[str, Any]
    cases: list[dict[str, Any]] = field(default_factory=list)
    trust_detail: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wasted_kwh(m: dict[str, float]) -> float:
    """DESIGN.md's objective at equal weights: export plus controlled import (kWh)."""
    return m["export_kwh"] + m["controlled_import_kwh"]


def import_ratio(candidate: dict[str, float], pi: dict[str, float]) -> float:
    return (candidate["controlled_import_kwh"] + IMPORT_FLOOR_KWH) / (
        pi["controlled_import_kwh"] + IMPORT_FLOOR_KWH
    )


def decide(
    candidate: dict[str, float],
    pi: dict[str, float],
    config: PromotionConfig,
    judge: str = "simulator",
    trust: float = 1.0,
    trust_detail: dict[str, Any] | None = None,
    cases: list[dict[str, Any]] | None = None,
    where: str = "",
    name: str = "the candidate",
    incumbent: str = "the PI",
) -> Verdict:
    """Apply the rule to the candidate's and the PI's metrics of record on the same validation days.

    Args:
        candidate, pi: envs/metrics.py metrics (export_kwh, controlled_import_kwh, safety_violations...).
        config: Thresholds.
        judge: Who produced the metrics ("simulator" or "forward model").
        trust: The judge's trust in [0, 1] (1 for the simulator).
        trust_detail: What the trust is made of, for the report.
        cases: Per-day (or per-window) numbers, for the report.
        where: Words naming the days judged on ("5 validation days (clear, ...)"), for the reason.
        name: What the candidate is called in the reason ("the CQL policy").
        incumbent: What ``pi`` is called in the reason: the PI, or the controller the candidate would replace
            ("the old bundle's controller"); the checks keep their names.
    """
    red = reduction_pct(candidate["export_kwh"], pi["export_kwh"])
    ratio = import_ratio(candidate, pi)
    w_c, w_pi = wasted_kwh(candidate), wasted_kwh(pi)
    violations = int(candidate["safety_violations"])
    checks = [
        {"check": "export reduction vs PI", "value": red, "target": f">= {config.margin_pct:g} %",
         "passed": bool(not math.isnan(red) and red >= config.margin_pct)},
        {"check": "controlled import vs PI", "value": ratio,
         "target": f"<= {config.max_import_ratio:g}x, or wasted energy lower",
         "passed": bool(ratio <= config.max_import_ratio or w_c < w_pi)},
        {"check": "safety violations", "value": violations, "target": "== 0", "passed": violations == 0},
        {"check": "judge trust", "value": trust, "target": f">= {config.min_trust:g}",
         "passed": bool(trust >= config.min_trust)},
    ]  # fmt: skip
    why = []
    if not checks[0]["passed"]:
        if pi["export_kwh"] <= 0:
            why.append(f"{incumbent} exports nothing on these days: there is nothing to cut")
        else:
            change = -red
            why.append(
                f"it exports {candidate['export_kwh']:.3f} kWh against {incumbent}'s {pi['export_kwh']:.3f} "
                f"kWh ({change:+.1f} %; it must be at least {config.margin_pct:g} % lower)"
            )
    if not checks[1]["passed"]:
        why.append(
            f"its controlled import is {ratio:.2f}x {incumbent}'s ({candidate['controlled_import_kwh']:.3f} "
            f"vs {pi['controlled_import_kwh']:.3f} kWh; at most {config.max_import_ratio:g}x) and its wasted "
            f"energy (export + controlled import) {w_c:.3f} kWh is not below {incumbent}'s {w_pi:.3f} kWh"
        )
    if not checks[2]["passed"]:
        why.append(f"it has {violations} safety violation(s)")
    if not checks[3]["passed"]:
        detail = f" ({trust_detail['why']})" if trust_detail and trust_detail.get("why") else ""
        why.append(f"the {judge}'s verdict is not trusted: trust {trust:.2f} < {config.min_trust:g}{detail}")
    promoted = not why
    on = f" on {where}" if where else ""
    if promoted:
        reason = (
            f"{name} beats {incumbent} in the {judge}{on}: export {candidate['export_kwh']:.3f} kWh against "
            f"{pi['export_kwh']:.3f} kWh ({-red:+.1f} %, margin {config.margin_pct:g} %), controlled import "
            f"{ratio:.2f}x {incumbent}'s, no safety violation"
            + (f", trust {trust:.2f}" if judge != "simulator" else "")
        )
    else:
        reason = f"{name} does not beat {incumbent} in the {judge}{on}: " + "; ".join(why)
    return Verdict(
        promoted=promoted, reason=reason, judge=judge, trust=float(trust), candidate=dict(candidate),
        pi=dict(pi), checks=checks, config=asdict(config), cases=list(cases or []),
        trust_detail=dict(trust_detail or {}),
    )  # fmt: skip


def validation_days(config: PromotionConfig, seed: int) -> list[tuple[str, int]]:
    """(scenario, env seed) of each validation day."""
    return [(s, VALIDATION_SEED_OFFSET + seed * 10_000 + d) for d, s in enumerate(config.day_scenarios())]


def judge_in_simulator(
    candidate: Controller,
    site: str | None = None,
    config: PromotionConfig | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    name: str = "the candidate",
) -> Verdict:
    """Run ``candidate`` and the PI (default gains) in the site's simulator on the validation days; decide.

    Args:
        candidate: Any export-domain controller (a trained policy through envs.controllers.PolicyController).
        site: The site's YAML (None: the shipped default site).
        config: The rule (default :class:`PromotionConfig`).
        seed: Selects the validation days.
        progress: Called with a line per day.
        name: What the candidate is called in the verdict's reason.
    """
    from envs.export_env import ExportEnvConfig
    from envs.rollout import rollout

    config = config or PromotionConfig()
    t0 = time.perf_counter()
    frames: dict[str, list[pl.DataFrame]] = {"candidate": [], "pi": []}
    cases = []
    for scenario, day_seed in validation_days(config, seed):
        cfg = ExportEnvConfig(site=site, scenario=scenario, episode_s=int(round(config.hours * 3600)),
                              start_s=int(round(config.start_h * 3600)))  # fmt: skip
        day = {}
        for who, ctrl in (("candidate", candidate), ("pi", PIController())):
            trace = rollout(ctrl, cfg, seed=day_seed)
            frames[who].append(trace.frame)
            day[who] = metrics_of_record(trace.frame)
        case = {
            "scenario": scenario, "seed": day_seed, "day_of_year": trace.day_of_year,
            **{f"{k}_{n}": day[n][k] for n in ("candidate", "pi")
               for k in ("export_kwh", "controlled_import_kwh", "safety_violations")},
        }  # fmt: skip
        cases.append(case)
        if progress:
            e_c, e_pi = case["export_kwh_candidate"], case["export_kwh_pi"]
            progress(
                f"validation day {len(cases)}/{config.days} ({scenario}): export {e_c:.3f} kWh, PI {e_pi:.3f}"
            )
    totals = {n: metrics_of_record(pl.concat(f)) for n, f in frames.items()}
    hours = f"{config.hours:g} h from {config.start_h:g}:00" if config.hours < 24 else "whole days"
    where = f"{config.days} validation day(s) ({hours}; {', '.join(sorted(set(config.day_scenarios())))})"
    reference = {"why": "the site's simulator is the reference"}
    verdict = decide(
        totals["candidate"], totals["pi"], config, "simulator", 1.0, reference, cases, where, name
    )
    verdict.seconds = round(time.perf_counter() - t0, 1)
    return verdict
