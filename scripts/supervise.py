"""``gridrl supervise``: learn the PI's dispatch preference from a site's logs alone (no simulator).

    gridrl data generate --controller dithered_preference --days 7 --out RAW
    gridrl data build --raw RAW --out DATASET
    gridrl supervise --dataset DATASET --out DIR [--seed S]
    gridrl benchmark --checkpoint DIR/module --out BENCH

The logs must hold the PI run with a dithered dispatch preference (``--controller dithered_preference``:
its total is the PI's every second, only the split over the phases varies). From them it recovers the
preference each 10-minute window held, fits the return of each preference from every logged state (an
ensemble of Q networks), and moves off a baseline (the outlook rule, or the PI's own spread) only where the
ensemble is sure of a gain: its mean advantage less ``--kappa`` x its spread must exceed ``--margin``
return standard deviations (rllib_configs/offline_supervisor.py says how, step by step).

Writes ``DIR/module`` (an RLModule checkpoint: ``gridrl benchmark``, ``gridrl export`` and Serve take it
as ``--checkpoint``), ``DIR/gridrl_run.json`` (the run's info, with the learner's report under
``offline``) and ``DIR/report.json``. Progress goes to stderr; the last stdout line is the report as JSON.
Same seed, same result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envs.outputs import OutputError, OutputKind, staged_output
from scripts.flags import SEED, command_parser, int_at_least

SUPERVISE_OUTPUT = OutputKind("the results of gridrl supervise", ("report.json", "gridrl_run.json"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from rllib_configs.offline_supervisor import Q_INPUTS, OfflineSupervisorConfig

    d = OfflineSupervisorConfig()
    p = command_parser(sub, "supervise", __doc__)
    p.add_argument("--dataset", required=True, help="dataset folder from `gridrl data build` of "
                   "dithered-preference logs")
    p.add_argument("--out", required=True, help="output directory (written whole at the end, or not at all)")
    p.add_argument("--force", action="store_true", help="replace an earlier result at --out")
    p.add_argument("--seed", type=SEED, default=0, help="network initialisation and minibatches (default 0)")
    p.add_argument("--config", default=d.config, help="the supervisor's training config: its RLModule, "
                   f"decision period, gate and discount (default {d.config})")
    p.add_argument("--baseline", choices=("rule", "pi"), default=d.baseline,
                   help="the preference kept where the Q ensemble is not sure of a better one: the outlook "
                   f"rule the PPO supervisor starts from, or 0, the PI's own spread (default {d.baseline})")
    p.add_argument("--margin", type=float, default=d.margin, help="another preference is chosen only where "
                   "its pessimistic advantage over the baseline's exceeds this many return standard "
                   f"deviations (default {d.margin:g}; inf: the baseline alone)")
    p.add_argument("--members", type=int_at_least(1), default=d.members,
                   help=f"Q networks, each on its own bootstrap of the logged episodes (default {d.members})")
    p.add_argument("--kappa", type=float, default=d.kappa, help="pessimism: the advantage counts as the "
                   f"members' mean less KAPPA x their std (default {d.kappa:g})")
    p.add_argument("--q-inputs", choices=Q_INPUTS, default=d.q_inputs,
                   help=f"what the Q networks read (default {d.q_inputs}; see "
                   "rllib_configs/offline_supervisor.py)")
    p.add_argument("--epochs", type=int_at_least(1), default=d.epochs,
                   help=f"passes over the samples of each Q network's fit (default {d.epochs})")
    return p


def run(args: argparse.Namespace) -> int:
    from rllib_configs.offline_supervisor import OfflineSupervisorConfig, train

    try:
        cfg = OfflineSupervisorConfig(config=args.config, margin=args.margin, epochs=args.epochs,
                                      baseline=args.baseline, members=args.members, kappa=args.kappa,
                                      q_inputs=args.q_inputs)
        with staged_output(Path(args.out), SUPERVISE_OUTPUT, force=args.force) as tmp:
            report = train(args.dataset, tmp, cfg, seed=args.seed)
            (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    except (FileNotFoundError, ValueError, KeyError, OutputError) as exc:
        print(f"gridrl supervise: {exc}", file=sys.stderr)
        return 2
    print(f"[supervise] wrote {args.out}/module: benchmark it with `gridrl benchmark --checkpoint "
          f"{args.out}/module --out DIR`", file=sys.stderr)
    print(json.dumps({"out": str(args.out), **report}))
    return 0
