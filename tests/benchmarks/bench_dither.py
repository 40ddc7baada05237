"""What a dithered PI's logs add, and what they cost the site (a script, not a test).

    .venv/bin/python tests/benchmarks/bench_dither.py --work /tmp/gridrl_dither [--days 7 --hours 24]

On the same simulated days (same seed: same weather, loads and link), for the plain PI and for the PI with
bounded exploration (``gridrl data generate --controller dithered_pi``, or ``dithered_preference``: the
PI's total split with a random dispatch preference; envs/controllers.py; ``--controllers`` picks them):

* **coverage**: clean logs are generated and built into a dataset each (``gridrl data generate`` and
  ``gridrl data build``, in ``--work``), and offline_data/coverage.py measures how far the logged actions
  depart from the nominal PI's in the same state (std per phase, W) and how spread the actions are per
  state bin (W), over the active steps (where something is commanded);
* **cost**: the metrics of record (envs/metrics.py) of each controller over the same days, summed: the
  export, the controlled import, the peak, command changes per minute, phase imbalance, violations.

Prints one JSON object; ``--dither-*`` set the bound as in ``gridrl data generate``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def metrics_over_days(cfg, site) -> dict:
    """The metrics of record of ``cfg``'s controller over its days, summed (energies) or averaged."""
    from envs.metrics import metrics_of_record
    from offline_data.generate import simulate_day

    per_day = []
    for date in cfg.dates():
        trace, _ = simulate_day(cfg, site, date)
        per_day.append(metrics_of_record(trace.frame))
    out = {k: round(sum(m[k] for m in per_day), 3) for k in ("export_kwh", "controlled_import_kwh")}
    out["peak_export_w"] = round(max(m["peak_export_w"] for m in per_day), 1)
    for k in ("oscillations_per_min", "phase_imbalance_w"):
        out[k] = round(sum(m[k] for m in per_day) / len(per_day), 2)
    out["safety_violations"] = int(sum(m["safety_violations"] for m in per_day))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the logs and datasets (replaced)")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--start-hour", type=float, default=None)
    ap.add_argument("--start-date", default="2025-06-01")
    ap.add_argument("--scenario", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dither-gains", default=None, help="LOW,HIGH (default DitherConfig's)")
    ap.add_argument("--dither-residual", type=float, default=None, help="W (default DitherConfig's)")
    ap.add_argument("--dither-hold", default=None, help="LOW,HIGH seconds (default DitherConfig's)")
    ap.add_argument("--controllers", default="pi,dithered_pi",
                    help="comma-separated logging controllers, pi first (default pi,dithered_pi; also "
                    "dithered_preference)")
    args = ap.parse_args()

    from dataclasses import replace

    from envs.controllers import DitherConfig, PreferenceDitherConfig
    from envs.site import load_site
    from offline_data.build import BuildConfig, build
    from offline_data.coverage import dataset_coverage
    from offline_data.generate import GenerateConfig, generate

    dither = DitherConfig()
    if args.dither_gains:
        lo, hi = (float(x) for x in args.dither_gains.split(","))
        dither = replace(dither, gain_low=lo, gain_high=hi)
    if args.dither_residual is not None:
        dither = replace(dither, residual_w=args.dither_residual)
    if args.dither_hold:
        dither = replace(dither, hold_s=tuple(int(x) for x in args.dither_hold.split(",")))
    shutil.rmtree(args.work, ignore_errors=True)
    site = load_site(None)
    report: dict = {
        "days": args.days,
        "hours": args.hours,
        "seed": args.seed,
        "scenario": args.scenario,
        "bound": dither.bound(),
        "preference_bound": PreferenceDitherConfig().bound(),
        "dates": None,
    }
    controllers = args.controllers.split(",")
    if controllers[0] != "pi":
        ap.error("--controllers: the plain PI comes first (the others are compared with it)")
    for controller in controllers:
        cfg = GenerateConfig(
            days=args.days, start_date=args.start_date, seed=args.seed, hours=args.hours,
            start_hour=args.start_hour, scenario=args.scenario, controller=controller, dither=dither,
        )  # fmt: skip
        report["dates"] = [str(cfg.dates()[0]), str(cfg.dates()[-1])]
        t0 = time.perf_counter()
        generate(cfg, args.work / controller / "raw")
        build(
            args.work / controller / "raw", args.work / controller / "dataset", BuildConfig(), progress=False
        )
        cov = dataset_coverage(args.work / controller / "dataset")
        t1 = time.perf_counter()
        report[controller] = {
            "coverage_active_steps": cov["active"],
            "coverage_all_steps": {k: cov["all"][k] for k in ("steps", "departure_std_w", "spread_w")},
            "metrics": metrics_over_days(cfg, site),
            "seconds": {"logs_and_dataset": round(t1 - t0, 1), "metrics": round(time.perf_counter() - t1, 1)},
        }
        print(f"[bench_dither] {controller}: {json.dumps(report[controller])}", file=sys.stderr, flush=True)
    for other in controllers[1:]:
        report[f"{other}_vs_pi"] = versus_pi(report["pi"], report[other])
    print(json.dumps(report, indent=1))
    return 0


def versus_pi(pi: dict, di: dict) -> dict:
    """A dithered controller's coverage and cost against the plain PI's."""
    a, b = pi["metrics"], di["metrics"]
    return {
        "spread_ratio_per_phase": [
            round(d / p, 2) if p and d is not None else None
            for p, d in zip(
                pi["coverage_active_steps"]["spread_w"], di["coverage_active_steps"]["spread_w"], strict=True
            )
        ],
        "export_pct": round(100 * (b["export_kwh"] / a["export_kwh"] - 1), 2) if a["export_kwh"] else None,
        "controlled_import_pct": (
            round(100 * (b["controlled_import_kwh"] / a["controlled_import_kwh"] - 1), 2)
            if a["controlled_import_kwh"]
            else None
        ),
        "oscillations_per_min": [a["oscillations_per_min"], b["oscillations_per_min"]],
    }


if __name__ == "__main__":
    raise SystemExit(main())
