"""``gridrl benchmark``: a policy against the PI and the oracle on whole held-out days, every weather, the
site it trained on and sites it never saw.

The question a site owner asks is not "does it beat the PI on cloudy hours" but "does it beat the PI on
my site, every day". So each case is one (site, weather) pair of whole days (00:00-24:00 by default):
the 5 weather scenarios on the policy's own site and on ``--sites`` sites drawn by envs/site_sampler.py
(other PV sizes and latitudes, devices on other phases, other tanks, loads and links). For every case it
runs the policy, the PI and the oracle on the same held-out days (scripts/evaluate.py's evaluation) and
reports the export reduction against the PI, the share of the PI-to-oracle gap closed and the controlled
import against the PI's. The summary is the mean reduction over cases and the worst case: a policy that
wins on average but loses a case does not beat the PI.

Writes ``DIR/benchmark.json`` (every case's metrics and the summary), ``DIR/benchmark.png`` (reduction
per case), ``DIR/sites/`` (the drawn sites' YAML) and ``DIR/cases/<site>__<scenario>/`` (each case's
evaluation: metrics.json, plots). Last stdout line: the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from envs.metrics import reduction_pct
from envs.outputs import OutputKind, staged_output
from envs.profiles import SCENARIOS
from envs.tables import format_table
from scripts.flags import SEED, add_day_window, add_output, command_parser, int_at_least

BENCHMARK_OUTPUT = OutputKind("the results of gridrl benchmark", ("benchmark.json",))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = command_parser(sub, "benchmark", __doc__)
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint dir (a trial's checkpoint_NNNNNN or best/)"
    )
    p.add_argument("--site", default=None, help="site YAML (default: the site the policy was trained on)")
    p.add_argument(
        "--sites", type=int_at_least(0), default=4,
        help="unseen sites drawn around --site (envs/site_sampler.py; default 4, 0 = its own site only)",
    )  # fmt: skip
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated weathers (default {','.join(SCENARIOS)})",
    )
    p.add_argument("--days", type=int_at_least(1), default=1, help="held-out days per case (default 1)")
    add_day_window(p)
    p.add_argument("--seed", type=SEED, default=0, help="selects the held-out days and the drawn sites")
    p.add_argument(
        "--jobs", type=int_at_least(1), default=1,
        help="cases run at once, one process each (default 1; the results do not depend on it)",
    )  # fmt: skip
    add_output(p, "benchmark")
    return p


def _run_case(
    checkpoint: str, case_dir: Path, site: str | None, site_name: str, scenario: str, days: int, seed: int,
    episode_s: int, start_s: int, threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One (site, weather) case: the policy, the PI and the oracle on the same held-out days."""
    from scripts.evaluate import evaluate_export

    if threads is not None:  # a pool's worker: one torch thread each, so N workers share N cores
        import torch

        torch.set_num_threads(threads)
    results = evaluate_export(checkpoint, case_dir, days, seed, ["pi", "oracle"], site, scenario, episode_s,
                              start_s)  # fmt: skip
    pol, pi = results["policy"], results["pi"]
    for m in results.values():
        m["wasted_kwh"] = m["export_kwh"] + m["controlled_import_kwh"]
    return {
        "site": site_name, "scenario": scenario,
        **{key: {k: results[k][key] for k in ("policy", "pi", "oracle")} for key in PER_CASE},
        "export_reduction_pct": reduction_pct(pol["export_kwh"], pi["export_kwh"]),
        "wasted_reduction_pct": reduction_pct(pol["wasted_kwh"], pi["wasted_kwh"]),
        "gap_closed": pol["gap_closed"],
        "safety_violations": pol["safety_violations"],
        "metrics": results,
    }  # fmt: skip


def run_cases(
    checkpoint: str, out: Path, site_paths: list[str | None], scenarios: list[str], days: int, seed: int,
    episode_s: int, start_s: int, jobs: int = 1,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every (site, weather) case, in that order whatever ``jobs`` (processes; each case is seeded on its
    own, so the results do not depend on it)."""
    from offline_data.stages import make_pool

    named = [(site, Path(site).stem if site else "default") for site in site_paths]
    todo = [(site, name, scenario) for site, name in named for scenario in scenarios]
    pool = make_pool(min(jobs, len(todo)))
    t0 = time.perf_counter()

    def report(case: dict[str, Any], done: int) -> None:
        pol, pi = case["export_kwh"]["policy"], case["export_kwh"]["pi"]
        print(f"[benchmark] case {done}/{len(todo)} {case['site']} {case['scenario']}: export {pol:.3f} "
              f"kWh vs PI {pi:.3f} ({case['export_reduction_pct']:+.1f} %), {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    def args(site: str | None, name: str, scenario: str) -> tuple:
        case_dir = out / "cases" / f"{name}__{scenario}"
        return (checkpoint, case_dir, site, name, scenario, days, seed, episode_s, start_s)

    if pool is None:
        cases = []
        for item in todo:
            cases.append(_run_case(*args(*item)))
            report(cases[-1], len(cases))
        return cases
    from concurrent.futures import as_completed

    with pool:
        futures = {pool.submit(_run_case, *args(*item), 1): i for i, item in enumerate(todo)}
        results: dict[int, dict[str, Any]] = {}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            report(results[futures[fut]], len(results))
    return [results[i] for i in range(len(todo))]


PER_CASE = ("export_kwh", "peak_export_w", "controlled_import_kwh", "wasted_kwh", "oscillations_per_min",
            "phase_imbalance_w", "safety_violations")  # fmt: skip
"""Metrics of record reported per case for the policy, the PI and the oracle (envs/metrics.py); wasted
energy is export plus the import the controlled loads caused."""


def _total(cases: list[dict[str, Any]], key: str, who: str) -> float:
    return sum(c[key][who] for c in cases)


def _mean(cases: list[dict[str, Any]], key: str, who: str) -> float:
    return _total(cases, key, who) / len(cases) if cases else math.nan


def targets(cases: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 16's targets, each with its measured value and whether it holds (a policy passes only if all do).

    * export at least 10 % lower than the PI's on average over the scored cases, and at least 25 % of the
      PI-to-oracle gap closed on average (cases where the oracle cannot beat the PI by 1 Wh are left out);
    * in no case more than 2 % higher;
    * controlled import at most 1.1 times the PI's, or wasted energy at least 10 % lower (totals);
    * phase imbalance no worse than the PI's (mean over cases, 1 % tolerance for noise);
    * fewer command changes per minute than the PI, and under 10 (mean over cases);
    * zero safety violations.
    """
    gaps = [c["gap_closed"] for c in cases
            if c["export_kwh"]["pi"] - c["export_kwh"]["oracle"] > 1e-3 and math.isfinite(c["gap_closed"])]  # fmt: skip
    mean_gap = sum(gaps) / len(gaps) if gaps else math.nan
    worst = summary["worst_case"]["export_reduction_pct"] if summary["worst_case"] else math.nan
    imp = summary["total_controlled_import_ratio"]
    wasted = reduction_pct(_total(cases, "wasted_kwh", "policy"), _total(cases, "wasted_kwh", "pi"))
    imb = (_mean(cases, "phase_imbalance_w", "policy"), _mean(cases, "phase_imbalance_w", "pi"))
    osc = (_mean(cases, "oscillations_per_min", "policy"), _mean(cases, "oscillations_per_min", "pi"))
    red = summary["mean_export_reduction_pct"]
    return {
        "mean_export_reduction_pct >= 10": {"value": red, "ok": red >= 10.0},
        "mean_gap_closed >= 0.25": {"value": mean_gap, "ok": mean_gap >= 0.25},
        "worst_case_export_reduction_pct >= -2": {"value": worst, "ok": worst >= -2.0},
        "controlled_import <= 1.1 x PI or wasted_energy >= 10 % lower": {
            "value": {"import_ratio": imp, "wasted_reduction_pct": wasted}, "ok": imp <= 1.1 or wasted >= 10.0},
        "phase_imbalance_w <= PI's": {"value": {"policy": imb[0], "pi": imb[1]}, "ok": imb[0] <= 1.01 * imb[1]},
        "command_changes_per_min < PI's and < 10": {
            "value": {"policy": osc[0], "pi": osc[1]}, "ok": osc[0] < osc[1] and osc[0] < 10.0},
        "safety_violations == 0": {"value": summary["safety_violations"], "ok": summary["safety_violations"] == 0},
    }  # fmt: skip


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst reduction over the cases where the PI exports anything (no export: nothing to cut), the
    totals, and the verdict on issue 16's targets (:func:`targets`)."""
    summary = _summary(cases)
    summary["targets"] = targets(cases, summary) if cases else {}
    summary["targets_met"] = bool(cases) and all(t["ok"] for t in summary["targets"].values())
    return summary


def _summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [c for c in cases if c["export_kwh"]["pi"] > 1e-3]
    red = [c["export_reduction_pct"] for c in scored]
    worst = min(scored, key=lambda c: c["export_reduction_pct"]) if scored else None
    pol_export = sum(c["export_kwh"]["policy"] for c in cases)
    pi_export = sum(c["export_kwh"]["pi"] for c in cases)
    return {
        "cases": len(cases),
        "cases_scored": len(scored),
        "mean_export_reduction_pct": sum(red) / len(red) if red else math.nan,
        "worst_case": None if worst is None else {
            "site": worst["site"], "scenario": worst["scenario"], "export_reduction_pct": worst["export_reduction_pct"]},
        "cases_beating_pi": sum(r > 0 for r in red),
        "total_export_reduction_pct": reduction_pct(pol_export, pi_export),
        "total_controlled_import_ratio": (
            sum(c["controlled_import_kwh"]["policy"] for c in cases)
            / max(sum(c["controlled_import_kwh"]["pi"] for c in cases), 1e-9)
        ),
        "safety_violations": sum(c["safety_violations"] for c in cases),
        "beats_pi_everywhere": bool(red) and min(red) > 0,
    }  # fmt: skip


_COLUMNS = ["site", "scenario", "policy kWh", "PI kWh", "oracle", "vs PI %", "gap", "import x PI",
            "wasted vs PI %", "peak kW", "PI", "chg/min", "PI", "imbal W", "PI", "viol"]  # fmt: skip
_FORMATS = [None, None, ".3f", ".3f", ".3f", "+.1f", ".2f", ".2f",
            "+.1f", ".2f", ".2f", ".2f", ".2f", ".0f", ".0f", None]  # fmt: skip


def cases_table(cases: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    """Per case: export (policy, PI, oracle, kWh), its change against the PI, the gap closed, controlled import
    and wasted energy against the PI's, peak export, command changes per minute, phase imbalance and
    violations; then each target's verdict when ``summary`` is given."""
    rows = []
    for c in cases:
        e, imp = c["export_kwh"], c["controlled_import_kwh"]
        ratio = imp["policy"] / imp["pi"] if imp["pi"] > 1e-9 else math.nan
        pk, osc, imb = c["peak_export_w"], c["oscillations_per_min"], c["phase_imbalance_w"]
        rows.append([c["site"], c["scenario"], e["policy"], e["pi"], e["oracle"], c["export_reduction_pct"],
                     c["gap_closed"], ratio, c["wasted_reduction_pct"], pk["policy"] / 1e3, pk["pi"] / 1e3,
                     osc["policy"], osc["pi"], imb["policy"], imb["pi"], c["safety_violations"]])  # fmt: skip
    lines = [format_table(rows, _COLUMNS, fmt=_FORMATS)]
    for name, t in (summary or {}).get("targets", {}).items():
        lines.append(f"{'met ' if t['ok'] else 'MISSED'}  {name}: {json.dumps(t['value'], default=_short)}")
    return "\n".join(lines)


def _short(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def plot(cases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{c['site']}\n{c['scenario']}" for c in cases]
    values = [c["export_reduction_pct"] for c in cases]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(cases)), 4))
    ax.bar(range(len(cases)), values, color=["tab:green" if v > 0 else "tab:red" for v in values])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(cases)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("export reduction vs PI (%)")
    ax.set_title("policy against the PI, whole held-out days (green: exports less)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from envs.site_sampler import write_sites
    from scripts.evaluate import checked_run_info

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        print(
            f"gridrl benchmark: --scenarios: unknown {unknown}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    try:
        info = checked_run_info(args, BENCHMARK_OUTPUT)
        if info.get("domain", "export") != "export":
            raise ValueError(
                f"{args.checkpoint}: a {info.get('domain')} policy; gridrl benchmark takes export ones"
            )
        base = args.site or info.get("env_config", {}).get("site")
        out = Path(args.out)
        with staged_output(out, BENCHMARK_OUTPUT, force=args.force) as tmp:
            drawn = write_sites(tmp / "sites", args.sites, args.seed, base)
            sites: list[str | None] = [base, *[str(p) for p in drawn]]
            window = int(round(args.hours * 3600)), int(round(args.start_h * 3600))
            cases = run_cases(
                args.checkpoint, tmp, sites, scenarios, args.days, args.seed, *window, args.jobs
            )
            summary = summarise(cases)
            (tmp / "benchmark.json").write_text(
                json.dumps(
                    {
                        "checkpoint": str(args.checkpoint),
                        "seed": args.seed,
                        "days": args.days,
                        "hours": args.hours,
                        "start_h": args.start_h,
                        "summary": summary,
                        "cases": cases,
                    },
                    indent=2,
                    default=str,
                )  # fmt: skip
            )
            plot(cases, tmp / "benchmark.png")
    except (FileNotFoundError, ValueError) as exc:  # OutputError, ConfigError name the file
        print(f"gridrl benchmark: {exc}", file=sys.stderr)
        return 2
    print(cases_table(cases, summary))
    print(json.dumps({"out": str(out), **summary}, default=str))
    return 0
