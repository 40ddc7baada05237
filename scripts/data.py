"""``gridrl data``: simulated raw logs and the offline dataset RLlib reads.

    gridrl data generate --days 2 --defects 0.02          # simulated logs of the PI, with real-log defects
    gridrl data generate --controller dithered_pi         # ... of the PI with bounded exploration
    gridrl data build                                     # validate, align, featurise, split -> Parquet
    gridrl data build --raw RAW_A RAW_B                   # one dataset from several log folders

Paths default to folders under the storage path, ``$GRIDRL_STORAGE`` (default ``~/gridrl``):
``raw/`` for the logs and ``dataset/`` for the build. See offline_data/ for what each step does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from envs.config import ConfigError, from_mapping, load_yaml, to_mapping
from envs.controllers import DitherConfig, PreferenceDitherConfig
from envs.outputs import OutputError
from rllib_configs.storage import storage_path
from scripts.flags import (
    HOURS,
    SEED,
    FlagError,
    add_scenario,
    command_parser,
    flag_error,
    float_in,
    int_at_least,
)

# GenerateConfig field -> the flag it comes from (messages name what the user typed).
GENERATE_FLAGS = {
    "site": "--site",
    "days": "--days",
    "start_date": "--start-date",
    "seed": "--seed",
    "defects": "--defects",
    "fmt": "--format",
    "hours": "--hours",
    "start_hour": "--start-hour",
    "scenario": "--scenario",
    "controller": "--controller",
}
# DitherConfig field -> flag; the flags apply to --controller dithered_pi only.
DITHER_FLAGS = {
    "gain_low": "--dither-gains",
    "gain_high": "--dither-gains",
    "gain_period_s": "--dither-gain-period",
    "residual_w": "--dither-residual",
    "hold_s": "--dither-hold",
}


def _pair(kind: type, text: str) -> tuple:
    """``LOW,HIGH`` as two numbers of ``kind``."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(kind(p) for p in parts)
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise argparse.ArgumentTypeError(f"expected two {what} LOW,HIGH, got {text!r}") from None


def _float_pair(text: str) -> tuple:
    return _pair(float, text)


def _int_pair(text: str) -> tuple:
    return _pair(int, text)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command_parser(subparsers, "data", __doc__)
    sub = parser.add_subparsers(dest="data_command", metavar="{generate,build}", required=True)
    store = storage_path()

    dither = DitherConfig()
    preference = PreferenceDitherConfig()
    g = sub.add_parser(
        "generate",
        help="run the PI (or a dithered PI) in the simulator and write raw logs with defects",
        description="Run the PI controller (or, with --controller dithered_pi, the PI with bounded "
        "exploration) in the export simulator, one episode per calendar day, and write the three raw-log "
        "streams (meter_readings, zigbee_commands, pi_state) partitioned by day, each on its own clock. "
        "Defects are injected at --defects and recorded in RAW/_defects/date=YYYY-MM-DD.jsonl; the "
        "controller, its settings and its bound in RAW/_logging/date=YYYY-MM-DD.json. The dithered PI's "
        f"bound, with the defaults: {dither.bound()}.",
    )
    g.add_argument("--site", default=None, help="site YAML (default: the shipped default site)")
    g.add_argument(
        "--days", type=int_at_least(1), default=1, help="number of consecutive days to simulate (default 1)"
    )
    g.add_argument(
        "--start-date",
        default="2025-06-01",
        help="first day, YYYY-MM-DD within 2025 (the simulator's calendar; default 2025-06-01)",
    )
    g.add_argument(
        "--seed",
        type=SEED,
        default=0,
        help="root seed; a day's logs depend only on (seed, date, window, defects, format, site, "
        "controller and its --dither-* settings)",
    )
    g.add_argument(
        "--defects",
        type=float_in(0, 0.2),
        default=0.0,
        help="defect rate: share of rows with a row-level defect, and the scale of gaps, clock jumps "
        "and truncated lines (see offline_data/defects.py; default 0 = clean logs)",
    )
    g.add_argument(
        "--format",
        dest="fmt",
        choices=("csv", "parquet", "jsonl"),
        default="csv",
        help="file format of every stream (default csv)",
    )
    g.add_argument(
        "--hours",
        type=HOURS,
        default=24.0,
        help="simulated hours per day, for short runs (default 24 = whole days)",
    )
    g.add_argument(
        "--start-hour",
        type=float_in(0, 24),
        default=None,
        help="local start hour of a shorter window (default 0 for whole days, else 10)",
    )
    add_scenario(g, "every day", default="random")
    g.add_argument(
        "--controller",
        choices=("pi", "dithered_pi", "dithered_preference"),
        default="pi",
        help="the logging controller: the plain PI (default; one action per state), or the PI with "
        "bounded exploration, so that offline RL sees more than one action per state. dithered_pi: "
        f"{dither.bound()} (envs/controllers.py DitheredPIController; the --dither-* flags set the numbers). "
        f"dithered_preference: {preference.bound()} (DitheredPreferenceController; the logs "
        "rllib_configs/offline_supervisor.py learns from; --preference-* set the numbers)",
    )
    g.add_argument(
        "--preference-period",
        type=int_at_least(1),
        default=None,
        metavar="S",
        help="dithered_preference: seconds between two draws of the preference "
        f"(default {preference.period_s})",
    )
    g.add_argument(
        "--preference-gate",
        type=float_in(0, 100),
        default=None,
        metavar="G",
        help="dithered_preference: a positive preference holds only while the PI's total is under G x the "
        f"power that starts the site's heat pump or EV; 0 = always (default {preference.gate:g})",
    )
    g.add_argument(
        "--dither-gains",
        type=_float_pair,
        default=None,
        metavar="LOW,HIGH",
        help=f"dithered_pi: range of the factors on kp and ki, LOW <= 1 <= HIGH <= 3 "
        f"(default {dither.gain_low:g},{dither.gain_high:g})",
    )
    g.add_argument(
        "--dither-gain-period",
        type=int_at_least(1),
        default=None,
        metavar="S",
        help=f"dithered_pi: seconds between two draws of the gains (default {dither.gain_period_s})",
    )
    g.add_argument(
        "--dither-residual",
        type=float_in(0, 2000),
        default=None,
        metavar="W",
        help="dithered_pi: the most the target may differ from the PI's, per phase, in W "
        f"(default {dither.residual_w:g}; 0 = gains only)",
    )
    g.add_argument(
        "--dither-hold",
        type=_int_pair,
        default=None,
        metavar="LOW,HIGH",
        help=f"dithered_pi: seconds a residual is held, drawn in [LOW, HIGH] "
        f"(default {dither.hold_s[0]},{dither.hold_s[1]})",
    )
    g.add_argument(
        "--out",
        type=Path,
        default=store / "raw",
        help=f"raw-log folder; new days are added, nothing held is overwritten (default {store / 'raw'})",
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="replace days that --out already holds with other content (never another site's folder)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress output")

    b = sub.add_parser(
        "build",
        help="validate, align, featurise and split raw logs into RLlib Parquet",
        description="Turn raw logs into the offline dataset: validate (quarantine with reasons), "
        "align to 1 s, compute the state vector (envs/state_spec.py), build transitions with a "
        "k-step lookahead, split by time, write normalization.json and manifest.json. Only new "
        "or changed day partitions are processed; the output is replaced atomically. Several raw folders "
        "(--raw A B, e.g. new logs, or Serve's LOG_DIR/raw/<site_id>) merge into one dataset: every row "
        "counts once (a file already taken, by its bytes, is skipped); two versions of one day's file, or "
        "folders of two sites, are refused by name (offline_data/sources.py).",
    )
    b.add_argument(
        "--raw",
        type=Path,
        nargs="+",
        action="extend",
        default=None,
        metavar="RAW",
        help=f"raw-log folder(s), merged in this order (default {store / 'raw'})",
    )
    b.add_argument(
        "--out",
        type=Path,
        default=store / "dataset",
        help=f"dataset folder, replaced atomically (default {store / 'dataset'})",
    )
    b.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML with BuildConfig keys (offline_data/build.py); flags given here override it",
    )
    b.add_argument(
        "--lookahead", type=int_at_least(1), default=None, help="k of the k-step lookahead target (default 5)"
    )
    b.add_argument(
        "--split", default=None, help="train,val,test shares in time order (default 0.7,0.15,0.15)"
    )
    b.add_argument(
        "--site",
        default=None,
        help="site YAML, for the action scale (default: RAW/site.yaml, else the shipped default)",
    )
    b.add_argument(
        "--max-meter-staleness",
        type=int_at_least(0),
        default=None,
        help="seconds a meter reading may be held before the episode ends (default 10)",
    )
    b.add_argument(
        "--max-pi-staleness",
        type=int_at_least(0),
        default=None,
        help="seconds a PI cycle may be forward-filled before the episode ends (default 2)",
    )
    b.add_argument(
        "--min-episode",
        type=int_at_least(2),
        default=None,
        help="shortest episode kept, in seconds (default 2)",
    )
    b.add_argument(
        "--seed",
        type=SEED,
        default=0,
        help="recorded in the manifest; the build itself draws no random numbers",
    )
    b.add_argument(
        "--workers",
        type=int_at_least(0),
        default=1,
        help="processes for the per-day stages (default 1; 0 = the CPUs available, at most 4). "
        "The dataset does not depend on it. On 2 shared cores, 2 workers were not faster than 1 "
        "(tests/benchmarks/bench_offline_data.py)",
    )
    b.add_argument(
        "--force",
        action="store_true",
        help="rebuild from scratch, replacing a dataset at --out even if it was built with another site",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _build_config(args: argparse.Namespace):
    from offline_data.build import BuildConfig
    from offline_data.split import parse_fractions

    data = load_yaml(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"
    cfg = from_mapping(BuildConfig, data, source=source)
    overrides = to_mapping(cfg)
    if args.lookahead is not None:
        overrides["lookahead"] = args.lookahead
    if args.split is not None:
        try:
            overrides["split"] = list(parse_fractions(args.split))
        except ValueError as exc:
            raise FlagError("--split", str(exc).split(": ", 1)[-1]) from exc
    if args.site is not None:
        overrides["site"] = args.site
    for flag, key in (
        ("max_meter_staleness", "max_meter_staleness_s"),
        ("max_pi_staleness", "max_pi_staleness_s"),
        ("min_episode", "min_episode_s"),
    ):
        if getattr(args, flag) is not None:
            overrides["align"][key] = getattr(args, flag)
    return from_mapping(BuildConfig, overrides, source=source)


def _only_with(args: argparse.Namespace, controller: str, given: dict[str, object]) -> None:
    """FlagError naming the first of ``given`` (flag -> its value, None when not given) that was given while
    ``--controller`` is not ``controller``."""
    named = [flag for flag, v in given.items() if v is not None]
    if named and args.controller != controller:
        raise FlagError(
            named[0], f"applies to --controller {controller} only (the controller is {args.controller})"
        )


def _dither_mapping(args: argparse.Namespace) -> dict:
    """The DitherConfig keys the --dither-* flags set; refuses them with another controller."""
    _only_with(args, "dithered_pi", {
        "--dither-gains": args.dither_gains,
        "--dither-gain-period": args.dither_gain_period,
        "--dither-residual": args.dither_residual,
        "--dither-hold": args.dither_hold,
    })  # fmt: skip
    out: dict = {}
    if args.dither_gains is not None:
        out["gain_low"], out["gain_high"] = args.dither_gains
    if args.dither_gain_period is not None:
        out["gain_period_s"] = args.dither_gain_period
    if args.dither_residual is not None:
        out["residual_w"] = args.dither_residual
    if args.dither_hold is not None:
        out["hold_s"] = list(args.dither_hold)
    return out


def _preference_mapping(args: argparse.Namespace) -> dict:
    """The PreferenceDitherConfig keys the --preference-* flags set; refuses them with another controller."""
    _only_with(args, "dithered_preference",
               {"--preference-period": args.preference_period, "--preference-gate": args.preference_gate})
    out: dict = {}
    if args.preference_period is not None:
        out["period_s"] = args.preference_period
    if args.preference_gate is not None:
        out["gate"] = args.preference_gate
    return out


def _generate(args: argparse.Namespace) -> int:
    from offline_data.generate import GenerateConfig, generate

    data = {k: getattr(args, k) for k in GENERATE_FLAGS} | {
        "dither": _dither_mapping(args),
        "preference": _preference_mapping(args),
    }
    try:
        cfg = from_mapping(GenerateConfig, data, source="command line")
    except ConfigError as exc:
        flags = GENERATE_FLAGS | {f"dither.{k}": v for k, v in DITHER_FLAGS.items()} | {
            "preference.period_s": "--preference-period",
            "preference.gate": "--preference-gate",
        }
        raise flag_error(exc, flags) or exc from exc

    from offline_data.progress import Progress

    with Progress("generate", cfg.days, "days", enabled=not args.quiet) as bar:
        summary = generate(cfg, args.out, lambda i, n, date: bar.update(1, date), force=args.force)
    print(json.dumps({"out": str(args.out), **summary}, indent=2))
    return 0


def _build(args: argparse.Namespace) -> int:
    from offline_data.build import build
    from offline_data.stages import default_workers

    cfg = _build_config(args)
    manifest = build(
        args.raw or [storage_path() / "raw"],
        args.out,
        cfg,
        seed=args.seed,
        command_line=["gridrl", *sys.argv[1:]],
        progress=not args.quiet,
        workers=args.workers if args.workers > 0 else default_workers(),
        force=args.force,
    )
    report = {
        "out": str(args.out),
        "counts": manifest["counts"],
        "days": {k: manifest["days"][k] for k in ("processed", "reused")},
        "raw": manifest["merge"]["raw"],
        "same_content_skipped": len(manifest["merge"]["same_content"]),
        "logging": {
            k: {"bound": v["bound"], "days": len(v["days"])}
            for k, v in manifest["logging"]["controllers"].items()
        },
        "transitions": manifest["stages"]["transitions"]["rows"],
        "time_span": manifest["time_span"],
    }
    print(json.dumps(report, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    from offline_data.build import BuildError
    from offline_data.rawio import RawLogError

    try:
        return _generate(args) if args.data_command == "generate" else _build(args)
    except (ConfigError, RawLogError, BuildError, OutputError, FlagError) as exc:
        print(f"gridrl data {args.data_command}: error: {exc}", file=sys.stderr)
        return 2
