"""``gridrl pipeline``: the end-to-end main job, stage by stage, on a local embedded Ray by default.

Stages: generate raw logs of the PI (with real-log defects) -> build the RLlib dataset -> the forward
dynamics model (trained on the dataset, scored on its test split against persistence) -> behaviour cloning
of the PI -> CQL initialised from BC -> evaluation of the CQL policy against the PI, the oracle and no
control on held-out days -> the same policy estimated with the forward model on the test split -> export
of the policy as a bundle (ONNX + manifest, parity-checked) -> a short shadow run of that bundle behind Ray
Serve on loopback, with simulated site traffic (the PI acts, the policy is logged) -> a report.

Each stage prints one progress line; then come the tables; the last stdout line is a JSON summary. What
Ray, RLlib, Tune and Serve print goes to ``OUT/pipeline.log`` (scripts/quiet.py), their workers' logs to
Ray's session folder; the summary names both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scripts.flags import SEED, int_at_least

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """Sizes of the pipeline's stages."""

    log_days: int
    log_hours: float
    log_start_hour: float
    bc_iters: int
    model_iters: int
    cql_iters: int
    model_windows: int
    model_horizon_s: int
    eval_days: int
    eval_hours: float
    eval_start_hour: float
    shadow_hours: float


PROFILES = {
    # demo: daylight windows, a few iterations: minutes on 2 cores
    "demo": Profile(log_days=2, log_hours=8.0, log_start_hour=8.0, bc_iters=4, model_iters=1, cql_iters=6,
                    model_windows=16, model_horizon_s=120, eval_days=1, eval_hours=6.0, eval_start_hour=9.0, shadow_hours=0.05),
    # full: a week of whole days of logs, longer training, three whole held-out days
    "full": Profile(log_days=7, log_hours=24.0, log_start_hour=0.0, bc_iters=30, model_iters=8, cql_iters=100,
                    model_windows=64, model_horizon_s=600, eval_days=3, eval_hours=24.0, eval_start_hour=0.0, shadow_hours=1.0),
}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pipeline",
        help="the end-to-end main job: logs -> dataset -> BC -> CQL -> evaluation -> bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="demo", help="demo (default, minutes) or full")
    p.add_argument("--out", default="runs/pipeline", help="output directory (default runs/pipeline)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of every stage")
    p.add_argument("--address", default=None, help="Ray cluster address (default: embedded local Ray)")
    p.add_argument("--num-cpus", type=int_at_least(1), default=2, help="CPUs of the embedded Ray (default 2)")
    return p


class Stages:
    """Runs named stages with one progress line each (to ``stream``) and keeps their timings."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.done, self.timings = total, 0, {}
        self.stream = stream or sys.stderr

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.done += 1
        # the line's start now, its end when the stage ends: nothing else writes to this stream meanwhile
        self.stream.write(f"[pipeline] {self.done}/{self.total} {name} ...")
        self.stream.flush()
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self.stream.write(f" failed after {time.perf_counter() - t0:.1f} s\n")
            raise
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.stream.write(f" {self.timings[name]} s\n")
        return result


def _train(config: str, dataset: Path, runs: Path, name: str, iters: int, seed: int, init_from: str | None = None) -> dict:
    from rllib_configs.loader import load_train_config
    from rllib_configs.runner import RunOptions, run_training

    spec = load_train_config(REPO / config, dataset=str(dataset))
    return run_training(spec, RunOptions(storage_path=runs, seed=seed, stop_iters=iters, name=name, init_from=init_from))


def dataset_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The report's ``dataset``: rows read, used and quarantined per stream, and transitions per split.

    From the keys ``gridrl data build`` writes (offline_data/build.py): ``counts`` and
    ``stages.transitions`` (``rows`` per split, ``dropped_at_split_cuts``).
    """
    return {"counts": manifest["counts"], "transitions": manifest["stages"]["transitions"]}


def run(args: argparse.Namespace) -> int:
    from scripts.quiet import quiet_console, ray_logs_dir

    prof = PROFILES[args.profile]
    out = Path(args.out).resolve()
    if out.is_dir() and any(out.iterdir()):
        print(f"gridrl pipeline: {out} is not empty: choose another --out", file=sys.stderr)
        return 2
    from envs.outputs import OutputError, OutputKind, check_output

    try:  # a file, a path under a file, an unwritable place: named before anything starts
        check_output(out, OutputKind("the results of gridrl pipeline", ("report.json",)))
    except OutputError as exc:
        print(f"gridrl pipeline: {exc}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    log = out / "pipeline.log"
    # Ray, RLlib, Tune, Ray Data and Serve write to this process's stdout and stderr: to pipeline.log; the
    # workers' own output stays in Ray's session folder (log_to_driver=False); the user sees the stages.
    with quiet_console(log) as console:
        import ray  # importing Ray, RLlib and torch can warn too: inside

        from cluster.local import init_ray
        from envs.dynamics.evaluator import format_results
        from rllib_configs.runner import print_summary
        from scripts.evaluate import format_criteria
        from scripts.simulate import format_table

        try:
            stages = Stages(total=9, stream=console.err)
            init_ray(args.address, num_cpus=args.num_cpus, log_to_driver=False)
            ray_logs = ray_logs_dir()
            report = _stages(args, prof, out, stages)
        except BaseException:
            console.err.write(f"[pipeline] the log of this run: {log}\n")
            raise
        finally:
            ray.shutdown()
    results, criteria = report["metrics"], report["criteria"]
    fwd, model_based = report["forward_model"], report["model_based"]
    print(format_table(results))
    print(format_criteria(criteria))
    fm = fwd["evaluation"]["criteria"]
    print("forward model on the test split: " + ", ".join(
        f"{r['criterion']} {r['value']:.4g} ({'ok' if r['passed'] else 'NOT met'})" for r in fm))
    print("model-based estimate (test split, no simulator; an estimate: the simulator's table above is the reference)")
    print(format_results(model_based))
    report["wall_s"] = round(time.perf_counter() - t_all, 1)
    report["logs"] = {"pipeline": str(log), "ray": ray_logs}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print_summary({"report": str(out / "report.json"), "wall_s": report["wall_s"],
                   "export_kwh": {k: round(v["export_kwh"], 3) for k, v in results.items()},
                   "logs": report["logs"]})
    return 0


def _stages(args: argparse.Namespace, prof: Profile, out: Path, stages: Stages) -> dict[str, Any]:
    """The nine stages; returns the report (without the wall time and the logs)."""
    from envs.dynamics.evaluator import evaluate_with_model
    from offline_data.build import BuildConfig, build
    from offline_data.generate import GenerateConfig, generate
    from rllib_configs.forward_model import pipeline_stage as model_stage
    from rllib_configs.policy import load_policy
    from scripts.evaluate import evaluate_export, success_criteria
    from scripts.serve import serve_and_drive
    from serve.bundle import export_checkpoint

    gen = GenerateConfig(days=prof.log_days, hours=prof.log_hours, start_hour=prof.log_start_hour, seed=args.seed,
                         defects=0.02, scenario="random")
    stages.run("generate raw logs of the PI", generate, gen, out / "raw")
    manifest = stages.run("build the dataset", build, out / "raw", out / "dataset", BuildConfig(), seed=args.seed,
                          progress=False)
    fwd = stages.run("forward model: train, score on the test split", model_stage, out / "dataset", out / "runs",
                     args.seed, prof.model_iters)
    bc = stages.run("behaviour cloning (BC)", _train, "rllib_configs/export/bc.yaml", out / "dataset", out / "runs",
                    "bc", prof.bc_iters, args.seed)
    cql = stages.run("CQL from BC", _train, "rllib_configs/export/cql.yaml", out / "dataset", out / "runs", "cql",
                     prof.cql_iters, args.seed, init_from=bc["checkpoint"])
    results = stages.run(
        "evaluate CQL against PI, oracle and no control on held-out days", evaluate_export, cql["checkpoint"],
        out / "evaluation", prof.eval_days, args.seed, ["pi", "oracle", "zero"], None, "broken_clouds",
        int(prof.eval_hours * 3600), int(prof.eval_start_hour * 3600),
    )
    model_based = stages.run(
        "model-based estimate of CQL vs PI on the test split (no simulator)",
        lambda: evaluate_with_model(
            load_policy(cql["checkpoint"]), fwd["checkpoint"], str(out / "dataset"), out / "evaluation_model",
            args.seed, prof.model_windows, prof.model_horizon_s, ("pi", "zero"),
        ),
    )
    stages.run("export the CQL policy as a bundle (ONNX parity-checked)", export_checkpoint, cql["checkpoint"],
               out / "bundle", evaluation=results["policy"], seed=args.seed)
    shadow = stages.run("shadow run behind Ray Serve (simulated traffic)", serve_and_drive, str(out / "bundle"),
                        out / "serve", prof.shadow_hours, args.seed, address=args.address, num_cpus=args.num_cpus)
    criteria = success_criteria(results)
    return {
        "profile": args.profile, "settings": asdict(prof), "seed": args.seed, "out": str(out),
        "stage_s": stages.timings, "dataset": dataset_summary(manifest),
        "forward_model": fwd, "model_based": model_based, "bc": bc, "cql": cql, "bundle": str(out / "bundle"),
        "shadow": shadow, "metrics": results, "criteria": criteria,
    }
