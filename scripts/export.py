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
            "A CityLearn run's checkpoint (gridrl citylearn train) makes a CityLearn bundle: observation "
            "encoding and scaling, per-device action bounds, reward weights and the KPIs of its held-out "
            "evaluation (serve/citylearn_bundle.py); --controller rbc --schema S, the CityLearn RBC's. "
            "The last stdout line is JSON: bundle path, domain, controller, files, parity."
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        help="RLlib checkpoint of a training run, export or CityLearn domain (checkpoint_NNNNNN or best/)",
    )
    what.add_argument(
        "--controller",
        choices=["pi", "rbc"],
        help="a baseline instead: the PI or the rule-based controller (with --schema: CityLearn's RBC)",
    )
    p.add_argument("--out", required=True, help="bundle directory to create (written whole, or not at all)")
    p.add_argument(
        "--site",
        default=None,
        help="export-domain baselines: site YAML giving the action bound (default: the shipped site)",
    )
    p.add_argument(
        "--schema",
        default=None,
        help="CityLearn: --controller rbc for this CityLearn schema (schema.json, its folder or a dataset "
        "name): its devices, limits and reward go in the bundle",
    )
    p.add_argument(
        "--safety",
        default=None,
        help="YAML of safety limits overriding the defaults (serve/safety.py SafetyLimits; CityLearn: "
        "serve/citylearn_safety.py CityLearnSafetyLimits)",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="evaluation metrics JSON to record in the manifest (e.g. gridrl evaluate's; CityLearn: a "
        "kpis.json of gridrl citylearn evaluate, also for --controller rbc)",
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
    from serve.bundle import export_baseline
    from serve.domains import export_checkpoint_bundle, load_runtime

    citylearn_rbc = args.controller is not None and args.schema is not None
    if args.schema is not None and args.controller != "rbc":
        what = (
            f"--controller {args.controller}"
            if args.controller
            else "--checkpoint (the run names its schema)"
        )
        print(
            f"gridrl export: --schema goes with --controller rbc (CityLearn's RBC), not {what}",
            file=sys.stderr,
        )
        return 2
    if args.controller and args.metrics and not citylearn_rbc:
        print(
            "gridrl export: --metrics applies to --checkpoint (a baseline has no evaluation)", file=sys.stderr
        )
        return 2
    if citylearn_rbc and args.site:
        print("gridrl export: --site is the export domain's; a CityLearn RBC takes --schema", file=sys.stderr)
        return 2
    try:
        safety = load_yaml(args.safety) if args.safety else None
        evaluation = _read_json(args.metrics, "--metrics")
        with staged_output(args.out, BUNDLE_OUTPUT, force=args.force) as tmp:
            if citylearn_rbc:
                from serve.citylearn_bundle import export_citylearn_rbc

                manifest = export_citylearn_rbc(
                    args.schema,
                    tmp,
                    safety,
                    args.safety or "safety",
                    evaluation,
                    evaluation_source=args.metrics,
                )
            elif args.controller:
                manifest = export_baseline(args.controller, tmp, args.site, safety, args.safety or "safety")
            else:
                manifest = export_checkpoint_bundle(
                    args.checkpoint,
                    tmp,
                    safety=safety,
                    safety_source=args.safety or "safety",
                    evaluation=evaluation,
                    seed=args.seed,
                    n_parity=args.parity_states,
                )
            load_runtime(tmp)  # what was written must load, before it replaces anything
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:  # Output/Config/BundleError
        print(f"gridrl export: {exc}", file=sys.stderr)
        return 2
    summary = {
        "bundle": str(Path(args.out).resolve()),
        "domain": manifest.get("domain", "export"),
        "controller": manifest["controller"],
        "algorithm": manifest["algorithm"],
        "files": manifest["files"],
        "parity": (manifest.get("onnx") or {}).get("parity"),
    }
    print(json.dumps(summary))
    return 0
