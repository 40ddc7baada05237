"""Benchmark: how much less than the PI can a real controller export, knowing the whole day? (issue 16)

Not a test. For each weather (whole days, 00:00-24:00) on the default site and on ``--sites`` sites drawn by
envs/site_sampler.py, on the same held-out day (env seed ``--seed``):

* ``PI``: the site's PI over the real link;
* ``LB``: envs/planner.py's LP lower bound on the export of ANY controller of the real devices (perfect
  foresight, perfect link): ``LB`` least export, ``LBcap`` least export with controlled import <= 1.1 x the
  PI's, ``LBw`` least wasted energy (export + controlled import);
* ``plan``: envs/planner.py's MILP day plan on the real devices (heat pump on/off, EV off or >= 6 A, per
  ``--switch-s``), EXECUTED in the simulator with the oracle's privileges (foresight, perfect link), the water
  heater trimming each second: achievable, so an upper bound on the real optimum;
* ``oracle``: envs/oracle.py, greedy on the relaxed site (continuous devices), the metrics' bound;
* ``cfirst``: envs/controllers.py ``ContinuousFirstPI``, the PI with the plan's dispatch rule (its total to
  the water heater's phase first), over the real link, causal: what the rule buys without foresight.

Columns: export kWh / controlled import kWh; then reductions of export (and of wasted energy) against the PI.
The real-device optimum lies between ``LB`` (``LBcap`` / ``LBw`` for the import-aware targets) and ``plan``.
Also printed per case: energy per device (kWh) under the PI and the plan, and the solvers' times and gaps.

    nice -n 19 .venv/bin/python tests/benchmarks/bench_plan.py [--seed 21] [--sites 2] [--scenarios clear,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from envs.controllers import ContinuousFirstPI, PIController  # noqa: E402
from envs.export_env import ExportControlEnv, ExportEnvConfig  # noqa: E402
from envs.metrics import metrics_of_record, reduction_pct  # noqa: E402
from envs.oracle import OracleController  # noqa: E402
from envs.planner import PlanController, day_arrays, lower_bound  # noqa: E402
from envs.profiles import SCENARIOS  # noqa: E402
from envs.rollout import rollout  # noqa: E402
from envs.site import load_site  # noqa: E402
from envs.site_sampler import describe, write_sites  # noqa: E402


def _run(controller, cfg: ExportEnvConfig, seed: int) -> dict:
    tr = rollout(controller, cfg, seed=seed)
    m = metrics_of_record(tr.frame)
    dev = {sid: float(tr.frame[f"slave_w_{sid}"].sum() / 3.6e6) for sid in tr.slave_ids}
    return {"export_kwh": m["export_kwh"], "controlled_import_kwh": m["controlled_import_kwh"],
            "changes_per_min": m["oscillations_per_min"], "device_kwh": dev}  # fmt: skip


def _lb(res) -> dict:
    return {"export_kwh": res.export_kwh, "controlled_import_kwh": res.import_kwh, "status": res.status,
            "solve_s": round(res.solve_s, 2), "device_kwh": res.extra.get("device_kwh")}  # fmt: skip


def run_case(site: str | None, scenario: str, seed: int, args) -> dict:
    cfg = ExportEnvConfig(site=site, scenario=scenario, episode_s=86399, start_s=0)
    env = ExportControlEnv(cfg)
    env.reset(seed=seed)
    day = day_arrays(env.sim)
    row: dict = {"pi": _run(PIController(), cfg, seed)}
    cap = 1.1 * row["pi"]["controlled_import_kwh"]
    row["lb"] = _lb(lower_bound(day, dt_s=args.dt_s))
    row["lb_cap"] = _lb(lower_bound(day, dt_s=args.dt_s, import_cap_kwh=cap))
    row["lb_wasted"] = _lb(lower_bound(day, dt_s=args.dt_s, objective="wasted"))
    ctl = PlanController(args.dt_s, args.import_weight, args.plan_time_limit, args.mip_gap, args.switch_s)
    row["plan"] = _run(ctl, cfg, seed)
    r = ctl.plan.result
    row["plan"]["model"] = {"export_kwh": r.export_kwh, "import_kwh": r.import_kwh, "status": r.status,
                            "solve_s": round(r.solve_s, 1), "mip_gap": r.mip_gap}  # fmt: skip
    row["oracle"] = _run(OracleController(), cfg, seed)
    row["cfirst"] = _run(ContinuousFirstPI.for_site(env.site), cfg, seed)
    return row


COLS = ("pi", "lb", "lb_cap", "lb_wasted", "plan", "oracle", "cfirst")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default=None, help="site YAML (default: the shipped default site)")
    ap.add_argument("--sites", type=int, default=2, help="sites drawn around --site (envs/site_sampler.py)")
    ap.add_argument("--seed", type=int, default=21, help="env seed (held-out day) and drawn sites' seed")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--dt-s", type=int, default=60, help="LP / plan time step (s)")
    ap.add_argument("--switch-s", type=int, default=300, help="plan: on/off decision period (s)")
    ap.add_argument("--import-weight", type=float, default=1.0, help="plan: weight of controlled import")
    ap.add_argument("--plan-time-limit", type=float, default=60.0, help="plan: HiGHS time limit (s)")
    ap.add_argument("--mip-gap", type=float, default=0.01, help="plan: HiGHS mip_rel_gap")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    t_all = time.perf_counter()
    print(f"# load average {os.getloadavg()[0]:.2f} at start; whole days, seed {args.seed}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    drawn = write_sites(tmp, args.sites, args.seed, args.site)
    sites: list[str | None] = [args.site] + [str(p) for p in drawn]
    for s in sites:
        print("# " + describe(load_site(s)), flush=True)
    print(f"{'site':12s}{'scenario':14s}" + "".join(f"{c:>15s}" for c in COLS)
          + "   export kWh / controlled import kWh")  # fmt: skip
    results = []
    for site in sites:
        name = Path(site).stem if site else "default"
        for sc in args.scenarios.split(","):
            t0 = time.perf_counter()
            row = run_case(site, sc, args.seed, args)
            results.append({"site": name, "scenario": sc, **row})
            cells = "".join(
                f"{row[c]['export_kwh']:8.2f}/{row[c]['controlled_import_kwh']:5.2f} " for c in COLS
            )
            pm = row["plan"]["model"]
            print(f"{name:12s}{sc:14s}{cells}  {time.perf_counter() - t0:.0f} s; plan MILP {pm['solve_s']} s "
                  f"gap {pm['mip_gap']:.3f}, model {pm['export_kwh']:.2f}/{pm['import_kwh']:.2f}",
                  flush=True)  # fmt: skip
            dev = f"PI {_fmt(row['pi']['device_kwh'])}  plan {_fmt(row['plan']['device_kwh'])}"
            print(f"{'':26s}devices kWh: {dev}  LBw {row['lb_wasted']['device_kwh']}", flush=True)
    print("\n# export reduction vs the PI (%), and wasted-energy reduction (export + controlled import)")
    print(f"{'site':12s}{'scenario':14s}{'LB':>8s}{'LBcap':>8s}{'plan':>8s}{'oracle':>8s}{'cfirst':>8s}"
          f"{'| wasted:':>10s}{'LBw':>8s}{'plan':>8s}{'oracle':>8s}{'cfirst':>8s}")  # fmt: skip
    sums: dict[str, list[float]] = {}
    for r in results:
        pi_e = r["pi"]["export_kwh"]
        pi_w = pi_e + r["pi"]["controlled_import_kwh"]
        vals = {f"e_{c}": reduction_pct(r[c]["export_kwh"], pi_e)
                for c in ("lb", "lb_cap", "plan", "oracle", "cfirst")}  # fmt: skip
        vals |= {f"w_{c}": reduction_pct(r[c]["export_kwh"] + r[c]["controlled_import_kwh"], pi_w)
                 for c in ("lb_wasted", "plan", "oracle", "cfirst")}  # fmt: skip
        r["reductions_pct"] = vals
        for k, v in vals.items():
            sums.setdefault(k, []).append(v)
        print(f"{r['site']:12s}{r['scenario']:14s}" + "".join(f"{v:8.1f}" for v in list(vals.values())[:5])
              + f"{'':10s}" + "".join(f"{v:8.1f}" for v in list(vals.values())[5:]))  # fmt: skip
    means = {k: sum(v for v in vs if math.isfinite(v)) / max(1, sum(math.isfinite(v) for v in vs))
             for k, vs in sums.items()}  # fmt: skip
    print(f"{'mean':26s}" + "".join(f"{v:8.1f}" for v in list(means.values())[:5]) + f"{'':10s}"
          + "".join(f"{v:8.1f}" for v in list(means.values())[5:]))  # fmt: skip
    worst = min(r["reductions_pct"]["e_cfirst"] for r in results)
    print(f"# cfirst (causal, real link): worst case {worst:.1f} % export vs the PI", flush=True)
    print(f"# load average {os.getloadavg()[0]:.2f} at end; {time.perf_counter() - t_all:.0f} s", flush=True)
    out = {"seed": args.seed, "args": vars(args), "mean_reductions_pct": means, "cases": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps({"mean_reductions_pct": means}))


def _fmt(d: dict) -> str:
    return "/".join(f"{v:.1f}" for v in d.values())


if __name__ == "__main__":
    main()
