"""``gridrl``: one command with subcommands (also ``python -m scripts``).

Each subcommand lives in its own module under scripts/ with two functions:
``add_parser(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``. Register the module in
:data:`COMMANDS`; a module is imported only when its command runs, so ``gridrl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module under scripts/, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("scripts.pipeline", "the end-to-end main job (demo profile: minutes on 2 cores)"),
    "train": ("scripts.train", "train an RLlib algorithm from a YAML config (rllib_configs/...)"),
    "supervise": ("scripts.supervise", "learn the PI's dispatch preference from dithered-preference logs"),
    "retrain": ("scripts.retrain", "retrain a bundle on new logs; ship only what beats it (promotion rule)"),
    "tune": ("scripts.tune", "run a Tune sweep (tune/<domain>/<algo>.yaml) and promote the best checkpoint"),
    "evaluate": ("scripts.evaluate", "evaluate a trained policy against the baselines on held-out days"),
    "benchmark": ("scripts.benchmark", "a policy against PI and oracle: whole days, every weather, unseen sites"),
    "evaluate-model": ("scripts.evaluate_model", "evaluate a forward dynamics model on a dataset's test split"),
    "simulate": ("scripts.simulate", "run controllers (PI, oracle, zero, random) on the export simulator"),
    "data": ("scripts.data", "simulated raw logs and the offline RLlib dataset (generate, build)"),
    "citylearn": ("scripts.citylearn", "CityLearn domain: build the mall schema, evaluate baselines and policies"),
    "export": ("scripts.export", "export a checkpoint (ONNX) or a baseline (pi, rbc) as a bundle"),
    "edge": ("scripts.edge", "run a bundle under the edge runtime (no Ray, no torch) on simulated days"),
    "serve": ("scripts.serve", "serve a bundle on Ray Serve: shadow, A/B, rollout or production"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridrl",
        description="Train, tune and serve RL controllers for energy systems on Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        # A light placeholder, so `gridrl --help` lists every command without importing it.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        parser = argparse.ArgumentParser(prog="gridrl")
        sub = parser.add_subparsers(dest="command")
        module.add_parser(sub)
        args = parser.parse_args(argv)
        return int(module.run(args) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    sys.exit(main())
