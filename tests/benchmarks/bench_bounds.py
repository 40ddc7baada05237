"""Benchmark: what stands between the PI and the oracle, on whole days (issue 16's measured reason).

Not a test. For each weather, on the same held-out day of one site, it runs:

* ``pi``: the site's PI (envs/controllers.py);
* ``pi_perfect_link``: the same PI with every command delivered at the end of its step, none lost;
* ``foresight_real_site``: the oracle's greedy rule (absorb next second's true surplus) with its foresight
  and perfect link, on the real site (EV 6 A minimum, heat pump on/off with minimum times, ramps,
  deadband);
* ``oracle``: the same rule on the relaxed site (envs/oracle.py): the lower bound of the metrics of record.

If a perfect link buys little and foresight on the real site does worse than the PI, the PI-to-oracle gap
is the relaxation's (continuous devices), not something a controller can learn to close.

    .venv/bin/python tests/benchmarks/bench_bounds.py [--site S] [--seed 21] [--scenarios clear,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from envs.controllers import PIController  # noqa: E402
from envs.export_env import ExportEnvConfig  # noqa: E402
from envs.metrics import metrics_of_record  # noqa: E402
from envs.oracle import OracleController  # noqa: E402
from envs.profiles import SCENARIOS  # noqa: E402
from envs.rollout import rollout  # noqa: E402

RUNS = {
    "pi": (PIController, False),
    "pi_perfect_link": (PIController, True),
    "foresight_real_site": (lambda: OracleController(relaxed=False), False),
    "oracle": (OracleController, False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", default=None, help="site YAML (default: the shipped default site)")
    ap.add_argument("--seed", type=int, default=21, help="env seed: the held-out day of each weather")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args()
    print(f"# load average {os.getloadavg()[0]:.2f}; whole days (00:00-24:00), seed {args.seed}", flush=True)
    print(f"{'scenario':15s}" + "".join(f"{n:>22s}" for n in RUNS) + "   (export kWh / controlled import kWh)")
    results = {}
    for sc in args.scenarios.split(","):
        cfg = ExportEnvConfig(site=args.site, scenario=sc, episode_s=86399, start_s=0)
        row = {}
        t0 = time.perf_counter()
        for name, (make, perfect) in RUNS.items():
            m = metrics_of_record(rollout(make(), replace(cfg, perfect_link=perfect), seed=args.seed).frame)
            row[name] = {"export_kwh": m["export_kwh"], "controlled_import_kwh": m["controlled_import_kwh"]}
        results[sc] = row
        cells = "".join(f"{r['export_kwh']:13.2f} / {r['controlled_import_kwh']:5.2f} " for r in row.values())
        print(f"{sc:15s}{cells}  {time.perf_counter() - t0:.0f} s", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
