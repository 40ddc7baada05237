"""``gridrl export``: a trained checkpoint, or a baseline controller, as a bundle (serve/bundle.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envs.outputs import OutputKind, staged_output
from scripts.flags import SEED, int_at_least

# A bundle folder (serve/bundle.py): manifest.json naming its controller.
BUNDLE_OUTPUT = OutputKind("a gridrl bundle", ("manifest.json",), json_key=("manifest.json", "controller"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a checkpoint (ONNX) or a baseline (pi, rbc) as a bundle for serve and the edge",
        description=(
            "Write BUNDLE/manifest.json (state spec, normalisation, action bounds, safety limits, domain and "
            "algorithm, training metrics, gridrl version, created_at, sha256 of every file) and, for a "
            "checkpoint, BUNDLE/policy.onnx (the deterministic policy). The export checks that ONNX and "
            "torch "
            "actions agree within 1e-5 on --parity-states states and refuses to write a bundle otherwise. "
            "The last stdout line is JSON: bundle path, controller, files, parity."
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint", help="RLlib checkpoint of an export-domain run (checkpoint_NNNNNN or best/)"
    )
    what.add_argument(
        "--controller", choices=["pi", "rbc"], help="a baseline instead: the PI or the rule-based controller"
    )
    p.add_argument("--out", required=True, help="bundle directory to create (written whole, or not at all)")
    p.add_argument(
        "--site",
        default=None,
        help="baselines: site YAML giving the action bound (default: the shipped site)",
    )
    p.add_argument(
        "--safety",
        default=None,
        help="YAML of safety limits overriding the defaults (serve/safety.py SafetyLimits)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="evaluation metrics JSON to record in the manifest (e.g. gridrl evaluate's)",
    )
    p.add_argument("--seed", type=SEED, default=0, help="seed of the parity states (default 0)")
    p.add_argument(
        "--parity-states",
        type=int_at_least(1),
        default=1000,
        help="states for the ONNX/torch parity check (default 1000)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out (a bundle only)")
    return p


def _read_json(path: str | None, what: str) -> dict | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        data = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {p}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{what} {p}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def run(args: argparse.Namespace) -> int:
    from envs.config import load_yaml
    from serve.bundle import export_baseline, export_checkpoint, load_bundle

    if args.controller and args.metrics:
        print("gridrl export: --metrics applies to --checkpoint (a baseline has no evaluation)", file=sys.stderr)
        return 2
    try:
        safety = load_yaml(args.safety) if args.safety else None
        evaluation = _read_json(args.metrics, "--metrics")
        with staged_output(args.out, BUNDLE_OUTPUT, force=args.force) as tmp:
            if args.controller:
                manifest = export_baseline(args.controller, tmp, args.site, safety, args.safety or "safety")
            else:
                manifest = export_checkpoint(
                    args.checkpoint,
                    tmp,
                    safety,
                    args.safety or "safety",
                    evaluation,
                    args.seed,
                    args.parity_states,
                )
            load_bundle(tmp)  # what was written must load, before it replaces anything
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:  # Output/Config/BundleError
        print(f"gridrl export: {exc}", file=sys.stderr)
        return 2
    summary = {
        "bundle": str(Path(args.out).resolve()),
        "controller": manifest["controller"],
        "algorithm": manifest["algorithm"],
        "files": manifest["files"],
        "parity": (manifest.get("onnx") or {}).get("parity"),
    }
    print(json.dumps(summary))
    return 0
