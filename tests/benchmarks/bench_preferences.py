"""Diagnostic: what a supervising policy (rllib_configs/export/ppo_supervisor.yaml) learned to prefer.

Not a test. For each weather it runs the site's PI over one day (05:00-21:00, envs/rollout.py) and prints the
policy's greedy dispatch preference (its action: +1 = the water heaters first, 0 = the PI's own spread,
-1 = last; envs/controllers.py ``preference_targets``) on the states of that day, every 30 minutes: does
the preference depend on the weather, as the planner's rule would want (high on dull days, low on clear
ones)? The states are the PI's, so the answer is what the policy would choose from there.

    .venv/bin/python tests/benchmarks/bench_preferences.py --checkpoint C [--site S] [--seed 0] \
        [--every-s 1800]

With ``--constant P1,P2,...`` (no checkpoint) it answers the other question, what a preference held all day
would give: per weather, each constant preference (envs/controllers.py ``ContinuousFirstPI``) on whole
days of the site, export against the PI's on the same day (``gridrl benchmark``'s held-out day of ``--seed``),
so a site where "water heaters first" loses shows which preference it needed. With ``--oracle`` it also runs
the perfect-foresight oracle on each day and prints each preference's share of the PI-to-oracle gap closed,
and last the ceiling of a preference held all day: the best of ``--constant`` on each day, chosen knowing the
weather, averaged over the days as ``gridrl benchmark`` averages its gap (days where the oracle does not beat
the PI by 1 Wh left out). A supervisor does better only by changing its preference within the day.
``--outlook T1,T2,...`` adds, beside the constants, the outlook rule at each threshold (rllib_configs/
pi_residual.py ``outlook_prior``, every second: +1 while the PV left in the day, at the last half hour's
clear-sky index, is under T times the site's tank kWh, else -1), which is what ``prior: outlook`` starts
a supervisor from; ``T@D`` sets its dull-day preference to D instead of +1 (``prior_dull``), ``T@D@S`` also
its sunny-day preference to S instead of -1 (``prior_sunny``), and ``hT``
is the rule over the tanks' room left instead of their size (``prior: headroom``, ``headroom_outlook``).
``--constant`` may then be empty (``--constant=``). The summary gives, per rule, its mean phase imbalance
and controlled import against the PI's over the same days (issue 16's targets: imbalance no worse, import at
most 1.1 x).

    .venv/bin/python tests/benchmarks/bench_preferences.py --constant=1 --outlook 1.5,2,3 --oracle --seed 7 \
        --scenarios clear,broken_clouds,overcast,summer,winter [--site S]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from envs.controllers import (  # noqa: E402
    ContinuousFirstPI,
    PIController,
    continuous_power,
    gated_w,
    preference_spread,
)
from envs.export_env import ExportEnvConfig  # noqa: E402
from envs.profiles import SCENARIOS  # noqa: E402
from envs.rollout import rollout  # noqa: E402
from envs.site import load_site, site_features  # noqa: E402
from rllib_configs.pi_residual import outlook_prior  # noqa: E402
from rllib_configs.policy import load_policy  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a checkpoint of pi_residual.allocation: supervisor")
    p.add_argument("--constant", help="comma-separated preferences held all day (instead of --checkpoint)")
    p.add_argument("--scenarios", default=",".join(sorted(SCENARIOS)), help="weathers (--constant)")
    p.add_argument("--site", default=None, help="site YAML (default: the site the policy was trained on)")
    p.add_argument("--seed", type=int, default=0, help="the day drawn for each weather")
    p.add_argument("--every-s", type=int, default=1800, help="seconds between two printed preferences")
    p.add_argument("--oracle", action="store_true", help="--constant: also the gap closed, and its ceiling")
    p.add_argument("--outlook", default="", help="comma-separated thresholds of the outlook rule")
    p.add_argument("--gates", default="0", help="comma-separated preference gates (envs/controllers.py "
                   "gated_w; 0: none): each rule and constant runs once per gate")
    args = p.parse_args()
    if args.constant is not None or args.outlook:
        return constants(args)
    if not args.checkpoint:
        p.error("--checkpoint or --constant is required")
    policy = load_policy(args.checkpoint)
    if getattr(getattr(policy.module, "residual", None), "allocation", None) != "supervisor":
        print(f"{args.checkpoint}: not a supervising policy (pi_residual.allocation: supervisor)", file=sys.stderr)
        return 2
    site = args.site or policy.info.get("env_config", {}).get("site")
    policy.for_site(load_site(site))
    print(f"greedy preference every {args.every_s} s from 05:00, on the PI's states (seed {args.seed})")
    for scenario in sorted(SCENARIOS):
        cfg = ExportEnvConfig(site=site, scenario=scenario, episode_s=16 * 3600, start_s=5 * 3600)
        states: list[np.ndarray] = []

        def grab(k: int, obs: np.ndarray, _t: object) -> dict:
            if k % args.every_s == 0:
                states.append(np.asarray(obs, np.float32).ravel())
            return {}

        rollout(PIController(), cfg, seed=args.seed, extra=grab)
        with torch.no_grad():
            pref = policy.module.greedy_preference(torch.as_tensor(np.array(states)))[:, 0].numpy()
        print(f"{scenario:14s} mean {pref.mean():+.2f} | " + " ".join(f"{x:+.2f}" for x in pref))
    return 0


def constants(args: argparse.Namespace) -> int:
    """Each preference in ``--constant`` held all day against the PI, per weather (whole days)."""
    from envs.metrics import add_gap_closed, metrics_of_record, reduction_pct
    from envs.rollout import make_controller
    from scripts.evaluate import held_out_day_seed

    prefs = [float(x) for x in (args.constant or "").split(",") if x.strip()]
    if bad := [x for x in prefs if not -1.0 <= x <= 1.0]:
        print(f"--constant: preferences must be within [-1, 1], got {bad}", file=sys.stderr)
        return 2
    try:
        specs = [x.strip().split("@") for x in args.outlook.split(",") if x.strip()]
        if any(len(x) > 3 for x in specs):
            raise ValueError(args.outlook)
        specs = [x + ["1", "-1"][len(x) - 1 :] for x in specs]  # T[@D[@S]]: D defaults to +1, S to -1
        thresholds = [(x[0].startswith("h"), float(x[0].removeprefix("h")), float(x[1]), float(x[2]))
                      for x in specs]
    except ValueError:
        print(f"--outlook: T, hT, T@D or T@D@S (h: over the tanks' room left; D, S: the dull-day and "
              f"sunny-day preferences), got {args.outlook!r}", file=sys.stderr)
        return 2
    if not prefs and not thresholds:
        print("--constant or --outlook: give at least one preference or threshold", file=sys.stderr)
        return 2
    try:
        gates = [float(x) for x in args.gates.split(",") if x.strip()]
        if not gates or min(gates) < 0:
            raise ValueError(args.gates)
    except ValueError:
        print(f"--gates: comma-separated factors >= 0, got {args.gates!r}", file=sys.stderr)
        return 2
    names = [f"{x:+.2f}" for x in prefs]
    names += [("headroom " if h else "outlook ") + f"{t:g}" + (f"@{d:g}" if d != 1 or s != -1 else "")
              + (f"@{s:g}" if s != -1 else "") for h, t, d, s in thresholds]
    labels = [name + (f" gate {g:g}" if g else "") for g in gates for name in names]
    day_seed = held_out_day_seed(args.seed, 0)  # gridrl benchmark's first held-out day
    where = args.site or "default site"
    print(f"{where}, day seed {day_seed}: export kWh, and vs the PI's (+ = less export)")
    best_gaps, best_red = [], []
    per_label: dict[str, list] = {}
    pi_totals: list[tuple[float, float]] = []
    for scenario in args.scenarios.split(","):
        cfg = ExportEnvConfig(site=args.site, scenario=scenario.strip(), episode_s=86_400, start_s=0)
        site = cfg.load_site()
        cont = tuple(continuous_power(site))
        results = {"pi": metrics_of_record(rollout(PIController(), cfg, seed=day_seed).frame)}
        if args.oracle:
            ctrl = make_controller("oracle", site.control.max_power_per_phase_w, day_seed)
            results["oracle"] = metrics_of_record(rollout(ctrl, cfg, seed=day_seed).frame)
        rules = []
        for g in gates:
            gate_w = gated_w(site, g)
            rules += [ContinuousFirstPI(cont, preference=pref, gate_w=gate_w) for pref in prefs]
            rules += [OutlookRule(site, t, d, headroom=h, sunny=s, gate_w=gate_w)
                      for h, t, d, s in thresholds]
        for label, rule in zip(labels, rules, strict=True):
            results[label] = metrics_of_record(rollout(rule, cfg, day_seed).frame)
        add_gap_closed(results)  # gridrl benchmark's gap closed (NaN without --oracle)
        pi = results["pi"]["export_kwh"]
        reds = [reduction_pct(results[label]["export_kwh"], pi) for label in labels]
        cells = [f"{label}: {results[label]['export_kwh']:.3f} ({red:+.1f} %"
                 + (f", gap {results[label]['gap_closed']:+.2f})" if args.oracle else ")")
                 for label, red in zip(labels, reds, strict=True)]  # fmt: skip
        oracle = results.get("oracle", {}).get("export_kwh", math.nan)
        head = f"{scenario:14s} PI {pi:.3f}" + (f" oracle {oracle:.3f}" if args.oracle else "")
        print(head + " | " + " | ".join(cells), flush=True)
        best_red.append(max(reds[: len(prefs)] or reds))
        if args.oracle and pi - oracle > 1e-3:  # as gridrl benchmark's mean gap: days the oracle can improve
            best_gaps.append(max(results[label]["gap_closed"] for label in labels[: len(prefs)] or labels))
        pi_totals.append((results["pi"]["phase_imbalance_w"], results["pi"]["controlled_import_kwh"]))
        for label, red in zip(labels, reds, strict=True):
            r = results[label]
            per_label.setdefault(label, []).append(
                (red, r["gap_closed"], pi - oracle > 1e-3, r["phase_imbalance_w"], r["controlled_import_kwh"])
            )
    pi_imb, pi_imp = (sum(x) / len(pi_totals) for x in zip(*pi_totals, strict=True))
    for label, rows in per_label.items():
        gaps = [row[1] for row in rows if row[2]]
        mean_gap = f", mean gap closed {sum(gaps) / max(len(gaps), 1):.3f}" if args.oracle else ""
        imb, imp = (sum(row[i] for row in rows) / len(rows) for i in (3, 4))
        print(f"{label}: mean export reduction {sum(row[0] for row in rows) / len(rows):+.1f} %, worst "
              f"{min(row[0] for row in rows):+.1f} %{mean_gap}; imbalance {imb:.0f} W "
              f"vs the PI's {pi_imb:.0f}, controlled import {imp:.2f} kWh vs {pi_imp:.2f}")
    if args.oracle and prefs:
        print(f"ceiling of a preference held all day (the best of {args.constant} on each day): mean export "
              f"reduction {sum(best_red) / len(best_red):+.1f} %, mean gap closed "
              f"{sum(best_gaps) / max(len(best_gaps), 1):.3f} over {len(best_gaps)} days")
    return 0


class OutlookRule(ContinuousFirstPI):
    """The outlook rule alone (rllib_configs/pi_residual.py ``outlook_prior``) as the PI's dispatch
    preference, recomputed every second from the state and the site's features: what ``prior: outlook``
    starts from; with ``headroom``, over the tanks' room left (``prior: headroom``)."""

    def __init__(
        self, site, threshold: float, dull: float = 1.0, headroom: bool = False, sunny: float = -1.0,
        gate_w: float = math.inf,
    ):
        super().__init__(tuple(continuous_power(site)), gate_w=gate_w)
        self.threshold, self.dull, self.sunny = threshold, dull, sunny
        self.room = self.continuous_w if headroom else None
        self.site_features = torch.as_tensor(site_features(site), dtype=torch.float64)

    def spread(self, u: np.ndarray, obs: np.ndarray, available: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.atleast_2d(obs), dtype=torch.float64)
        x = torch.cat([x, self.site_features.expand(len(x), -1)], dim=-1)
        pref = outlook_prior(x, self.threshold, self.dull, self.room, self.sunny)[:, 0].numpy()
        return preference_spread(u, obs, available, self.continuous_w, pref, self.gate_w)


if __name__ == "__main__":
    sys.exit(main())
