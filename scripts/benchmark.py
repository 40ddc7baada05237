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
from envs.outputs import OutputKind, check_output, staged_output
from envs.profiles import SCENARIOS
from scripts.flags import HOURS, SEED, START_H, check_window, int_at_least

BENCHMARK_OUTPUT = OutputKind("the results of gridrl benchmark", ("benchmark.json",))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "benchmark",
        help="a policy against PI and oracle: whole days, every weather, its site and unseen sites",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument("--hours", type=HOURS, default=24.0, help="hours per day from --start-h (default 24)")
    p.add_argument("--start-h", type=START_H, default=0.0, help="start of each day's window (default 0)")
    p.add_argument("--seed", type=SEED, default=0, help="selects the held-out days and the drawn sites")
    p.add_argument("--out", required=True, help="output directory (written whole at the end, or not at all)")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier `gridrl benchmark` result at --out"
    )
    return p


def run_cases(
    checkpoint: str, out: Path, site_paths: list[str | None], scenarios: list[str], days: int, seed: int,
    episode_s: int, start_s: int,
) -> list[dict[str, Any]]:  # fmt: skip
    from scripts.evaluate import evaluate_export

    cases = []
    total = len(site_paths) * len(scenarios)
    for site in site_paths:
        site_name = Path(site).stem if site else "default"
        for scenario in scenarios:
            t0 = time.perf_counter()
            results = evaluate_export(
                checkpoint, out / "cases" / f"{site_name}__{scenario}", days, seed, ["pi", "oracle"], site,
                scenario, episode_s, start_s,
            )  # fmt: skip
            pol, pi = results["policy"], results["pi"]
            case = {
                "site": site_name, "scenario": scenario,
                "export_kwh": {k: results[k]["export_kwh"] for k in ("policy", "pi", "oracle")},
                "export_reduction_pct": reduction_pct(pol["export_kwh"], pi["export_kwh"]),
                "gap_closed": pol["gap_closed"],
                "controlled_import_kwh": {k: results[k]["controlled_import_kwh"] for k in ("policy", "pi")},
                "safety_violations": pol["safety_violations"],
                "metrics": results,
            }  # fmt: skip
            cases.append(case)
            print(f"[benchmark] case {len(cases)}/{total} {site_name} {scenario}: export {pol['export_kwh']:.3f} "
                  f"kWh vs PI {pi['export_kwh']:.3f} ({case['export_reduction_pct']:+.1f} %), "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    return cases


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and worst reduction over the cases where the PI exports anything (no export: nothing to cut)."""
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


def format_table(cases: list[dict[str, Any]]) -> str:
    lines = [f"{'site':16s}{'scenario':15s}{'policy kWh':>11s}{'PI kWh':>9s}{'oracle':>8s}{'vs PI':>9s}"
             f"{'gap':>7s}{'import x PI':>12s}"]  # fmt: skip
    for c in cases:
        e, imp = c["export_kwh"], c["controlled_import_kwh"]
        ratio = imp["policy"] / imp["pi"] if imp["pi"] > 1e-9 else math.nan
        lines.append(f"{c['site']:16s}{c['scenario']:15s}{e['policy']:11.3f}{e['pi']:9.3f}{e['oracle']:8.3f}"
                     f"{c['export_reduction_pct']:+8.1f}%{c['gap_closed']:7.2f}{ratio:12.2f}")  # fmt: skip
    return "\n".join(lines)


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
    from rllib_configs.policy import find_run_info

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        print(
            f"gridrl benchmark: --scenarios: unknown {unknown}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    if problem := check_window(args.hours, args.start_h):
        print(f"gridrl benchmark: {problem}", file=sys.stderr)
        return 2
    try:
        check_output(args.out, BENCHMARK_OUTPUT, force=args.force)  # before anything is loaded
        info = find_run_info(args.checkpoint)
        if info.get("domain", "export") != "export":
            raise ValueError(
                f"{args.checkpoint}: a {info.get('domain')} policy; gridrl benchmark takes export ones"
            )
        base = args.site or info.get("env_config", {}).get("site")
        out = Path(args.out)
        with staged_output(out, BENCHMARK_OUTPUT, force=args.force) as tmp:
            drawn = write_sites(tmp / "sites", args.sites, args.seed, base)
            sites: list[str | None] = [base, *[str(p) for p in drawn]]
            cases = run_cases(args.checkpoint, tmp, sites, scenarios, args.days, args.seed,
                              int(round(args.hours * 3600)), int(round(args.start_h * 3600)))  # fmt: skip
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
    print(format_table(cases))
    print(json.dumps({"out": str(out), **summary}, default=str))
    return 0
