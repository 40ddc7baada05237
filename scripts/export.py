"""``gridrl export``: a trained checkpoint, or a baseline controller, as a bundle (serve/bundle.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
    p.add_argument("--out", required=True, help="bundle directory to create")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the parity states (default 0)")
    p.add_argument(
        "--parity-states",
        type=int,
        default=1000,
        help="states for the ONNX/torch parity check (default 1000)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    return p


def _read_json(path: str | None, what: str) -> dict | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from envs.config import load_yaml
    from serve.bundle import export_baseline, export_checkpoint, load_bundle

    try:
        safety = load_yaml(args.safety) if args.safety else None
        if args.controller:
            manifest = export_baseline(
                args.controller, args.out, args.site, safety, args.safety or "safety", args.force
            )
        else:
            evaluation = _read_json(args.metrics, "--metrics")
            manifest = export_checkpoint(
                args.checkpoint,
                args.out,
                safety,
                args.safety or "safety",
                evaluation,
                args.seed,
                args.parity_states,
                args.force,
            )
        load_bundle(args.out)  # what was written must load
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:  # ConfigError, BundleError
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
