"""``gridrl citylearn``: build the mall's CityLearn schema; evaluate and train on any CityLearn schema.

gridrl citylearn build-schema --site envs/sites/iquitos_mall.yaml --out runs/mall [--days 3] [--seed 0]
gridrl citylearn evaluate --schema runs/mall/schema.json --out runs/mall_eval [--days 7] [--policy CKPT]
gridrl citylearn train --schema PATH [--algo ppo|a2c|sac] [--time-budget S] [--evaluate]

Any CityLearn 3.0.2 schema.json works: gridrl's reward replaces the schema's own ``reward_function`` (a
warning says so), legacy entries CityLearn 3.0.2 cannot load are dropped with a warning naming them, and a
schema that cannot run offline is refused with one line naming the file and the entry (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from envs.config import ConfigError
from envs.outputs import OutputError, OutputKind, check_output
from scripts.flags import add_ray


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``citylearn`` and its sub-commands to ``subparsers``."""
    p = subparsers.add_parser(
        "citylearn",
        help="CityLearn domain: build the mall schema, evaluate baselines and policies",
        description="CityLearn domain: build the Iquitos mall schema, run controllers on a CityLearn schema.",
    )
    sub = p.add_subparsers(dest="citylearn_command", metavar="SUBCOMMAND", required=True)

    b = sub.add_parser(
        "build-schema",
        help="write schema.json + CSVs for a site YAML",
        description="Generate a site's hourly profiles (PV, load, EV sessions, tariff, CO2) and write a "
        "CityLearn 3.0.2 schema. Nothing is downloaded. The defaults reproduce the mall's figures.",
    )
    b.add_argument("--site", default=None, help="site YAML (default: envs/sites/iquitos_mall.yaml)")
    b.add_argument("--out", required=True, help="output folder for schema.json, the CSVs and summary.json")
    b.add_argument("--days", type=int, default=None, help="days to write (default: the whole calendar, 365)")
    b.add_argument("--start-day", type=int, default=0, help="first day written, 0 = January 1st (default 0)")
    b.add_argument("--seed", type=int, default=0, help="seed of every generated profile (default 0)")

    e = sub.add_parser(
        "evaluate",
        help="run baselines (and a policy) over one episode, write kpis.json and dispatch.png",
        description="Run controllers on the same episode of any CityLearn schema (the mall's, or a local "
        "challenge dataset) and write DIR/kpis.json ({controller: {kpi: value}}) and DIR/dispatch.png.",
    )
    e.add_argument("--schema", required=True, help="schema.json, its folder, or a dataset folder name under "
                   "$CITYLEARN_LOCAL_DATASETS_PATH")  # fmt: skip
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument(
        "--controllers",
        default="no_control,rbc",
        help="comma-separated baselines: no_control (plug and charge), rbc, zero (charge nothing, battery "
        "idle), rbc_no_ev (the RBC's battery, no EV charging), random (uniform actions, --seed), "
        "citylearn_rbc (default no_control,rbc)",
    )
    e.add_argument("--policy", default=None, help="RLlib checkpoint folder; evaluated under 'policy'")
    e.add_argument(
        "--days",
        type=int,
        default=None,
        help="episode length in days (default: the whole schema; CityLearn's KPIs take minutes on a year)",
    )
    e.add_argument(
        "--start-day", type=int, default=0, help="first day of the episode within the schema (default 0)"
    )
    e.add_argument(
        "--seed", type=int, default=0, help="reset seed, the same for every controller (default 0)"
    )
    e.add_argument(
        "--co2-factor", type=float, default=0.4521, help="kg CO2 per kWh imported (default 0.4521)"
    )
    e.add_argument("--plot-days", type=int, default=7, help="days shown in dispatch.png (default 7)")
    e.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a reward setting (envs/citylearn/reward.py RewardConfig), repeatable: e.g. co2=0.6, "
        "ev_constraint=0 (the seed's five weights alone, without the EV constraint)",
    )

    t = sub.add_parser(
        "train",
        help="train PPO, A2C or SAC on any CityLearn schema (rllib_configs/citylearn/<algo>.yaml)",
        description="Train a policy on any CityLearn 3.0.2 schema with the settings of "
        "rllib_configs/citylearn/<algo>.yaml (or --config), through the runner of `gridrl train`: weekly "
        "episodes, held-out weeks never trained on, RBC-residual actions. The last stdout line is JSON.",
    )
    t.add_argument("--schema", required=True, help="schema.json or its folder")
    t.add_argument("--algo", choices=["ppo", "a2c", "sac"], default="ppo", help="algorithm (default ppo)")
    t.add_argument(
        "--config", default=None, help="training YAML instead of rllib_configs/citylearn/<algo>.yaml"
    )
    t.add_argument(
        "--episode-steps", type=int, default=None, help="steps per episode (default: the config's)"
    )
    t.add_argument(
        "--holdout-weeks",
        default=None,
        help="comma-separated 0-based weeks never trained on, or 'none' (default: the config's)",
    )
    t.add_argument(
        "--start-step", type=int, default=None, help="first simulated step (default: the schema's)"
    )
    t.add_argument("--end-step", type=int, default=None, help="last simulated step (default: the schema's)")
    t.add_argument(
        "--action-mode",
        choices=["direct", "rbc_residual"],
        default=None,
        help="policy actions go to CityLearn (direct) or correct the RBC (default: the config's)",
    )
    stop = t.add_argument_group("stop criteria (first reached wins; default 10 iterations)")
    stop.add_argument("--stop-iters", type=int, default=None, help="training iterations")
    stop.add_argument("--stop-timesteps", type=int, default=None, help="sampled env steps")
    stop.add_argument("--time-budget", type=float, default=None, metavar="S", help="wall-clock seconds")
    t.add_argument("--seed", type=int, default=0, help="seed of envs, networks and sampling (default 0)")
    t.add_argument("--storage-path", default="runs", help="root of checkpoints and logs (default ./runs)")
    t.add_argument("--name", default=None,
                   help="experiment name (default citylearn_<algorithm>_<schema folder>)")
    t.add_argument("--num-env-runners", type=int, default=None, help="override env_runners.num_env_runners")
    t.add_argument("--num-envs-per-runner", type=int, default=None,
                   help="override env_runners.num_envs_per_env_runner (vectorised sampling)")  # fmt: skip
    t.add_argument(
        "--evaluate",
        action="store_true",
        help="then evaluate the last checkpoint on the held-out weeks (gridrl evaluate)",
    )
    add_ray(t)
    p.set_defaults(func=run)
    return p


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


CITYLEARN_EVALUATE_OUTPUT = OutputKind("the results of gridrl citylearn evaluate", ("kpis.json",))
CITYLEARN_SCHEMA_OUTPUT = OutputKind("a schema of gridrl citylearn build-schema", ("schema.json",))


def _build(args: argparse.Namespace) -> int:
    from envs.citylearn.schema import build_schema
    from envs.citylearn.site import DEFAULT_MALL_SITE_PATH, load_site

    check_output(args.out, CITYLEARN_SCHEMA_OUTPUT, update=True)  # a file, unwritable: named first
    site_path = Path(args.site) if args.site else DEFAULT_MALL_SITE_PATH
    site = load_site(site_path)
    t0 = time.perf_counter()
    _say(f"building {site.name} from {site_path} (seed {args.seed}) ...")
    try:
        result = build_schema(site, args.out, days=args.days, start_day=args.start_day, seed=args.seed)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        source = site_path if field.startswith("ev.") else "command line"
        raise ConfigError(source, field if problem else "<input>", problem or str(exc)) from exc
    _say(f"wrote {result.schema_path} in {time.perf_counter() - t0:.1f} s")
    print(json.dumps(result.summary, indent=2))
    return 0


def _window(schema_path: Path, days: int | None, start_day: int) -> dict[str, int]:
    from envs.citylearn.prepare import prepare_schema, simulation_window

    first, last, seconds = simulation_window(schema_path)
    per_day = max(int(round(86400 / seconds)), 1)
    start = first + start_day * per_day
    end = last if days is None else start + days * per_day - 1
    if start_day < 0 or (days is not None and days < 1) or end > last or start >= end:
        problem = f"window steps [{start}, {end}] is outside the schema's [{first}, {last}]"
        raise ConfigError(schema_path, "--days/--start-day", problem)
    # a ConfigError naming the entry if CityLearn cannot load the schema on that window (before anything runs)
    prepare_schema(schema_path, start_time_step=start, end_time_step=end)
    return {"start_time_step": start, "end_time_step": end}


def _reward_kwargs(items: list[str]) -> dict[str, Any]:
    """``--reward FIELD=VALUE`` settings as reward kwargs (values read as YAML scalars: 0.6, departure)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise ConfigError(None, "--reward", f"expected FIELD=VALUE, got {item!r}")
        try:
            out[field.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[field.strip()] = value
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from envs.citylearn.env import resolve_schema
    from envs.citylearn.evaluate import evaluate_controllers, kpi_table
    from rllib_configs.policy import load_module_policy

    check_output(args.out, CITYLEARN_EVALUATE_OUTPUT, update=True)  # a file, unwritable: named first
    schema = resolve_schema(args.schema)
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    policies = {"policy": load_module_policy(args.policy)} if args.policy else None
    env_config = {
        "schema": str(schema),
        **_window(schema, args.days, args.start_day),
        "reward_kwargs": _reward_kwargs(args.reward),
    }
    try:
        results = evaluate_controllers(
            env_config, args.out, controllers=controllers, policies=policies, seed=args.seed,
            co2_factor=args.co2_factor, plot_days=args.plot_days, progress=_say,
        )  # fmt: skip
    except ValueError as exc:
        if "controllers:" in str(exc):
            raise ConfigError(None, "--controllers", str(exc).split(": ", 1)[1]) from exc
        raise
    print(kpi_table(results, against=None))
    _say(f"wrote {Path(args.out) / 'kpis.json'} and {Path(args.out) / 'dispatch.png'}")
    return 0


def _weeks(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise ConfigError(
            None, "--holdout-weeks", f"expected comma-separated week numbers or 'none', got {text!r}"
        ) from None


def train_spec(args: argparse.Namespace) -> Any:
    """The spec of ``gridrl citylearn train``: the algorithm's YAML on ``--schema``, overrides applied,
    checked by building the env once (schema errors surface before Ray starts)."""
    from envs.citylearn.env import CityLearnRLlibEnv, resolve_schema
    from rllib_configs.envs import CITYLEARN_ENV, typed_env_config
    from rllib_configs.loader import REPO_ROOT, load_train_config

    config_path = (
        Path(args.config) if args.config else REPO_ROOT / "rllib_configs" / "citylearn" / f"{args.algo}.yaml"
    )
    spec = load_train_config(config_path)
    if spec.settings.domain != "citylearn" or spec.algo_config.env != CITYLEARN_ENV:
        raise ConfigError(
            config_path, "environment.env", f"not a CityLearn config (env {spec.algo_config.env!r})"
        )
    env_config = dict(spec.algo_config.env_config)
    env_config["schema"] = str(resolve_schema(args.schema))
    for key, value in (
        ("episode_time_steps", args.episode_steps),
        ("holdout_weeks", _weeks(args.holdout_weeks)),
        ("start_time_step", args.start_step),
        ("end_time_step", args.end_step),
        ("action_mode", args.action_mode),
    ):
        if value is not None:
            env_config[key] = value
    env_config = typed_env_config(CITYLEARN_ENV, env_config, Path("gridrl citylearn train"))
    t0 = time.perf_counter()
    env = CityLearnRLlibEnv(env_config)
    _say(
        f"{env_config['schema']}: obs {env.observation_space.shape}, actions {env.action_space.shape}, "
        f"{len(env.windows)} training episode(s) of {env.windows[0][1] - env.windows[0][0] + 1} steps, "
        f"held-out weeks {list(env.config.holdout_weeks)} (checked in {time.perf_counter() - t0:.1f} s)"
    )
    env.heldout_windows()  # a held-out week past the schema's end is an error now, not after training
    spec.algo_config.environment(env_config=env_config)
    if args.num_envs_per_runner is not None:
        spec.algo_config.env_runners(num_envs_per_env_runner=args.num_envs_per_runner)
    spec.raw.setdefault("environment", {})["env_config"] = env_config
    return spec


def _train(args: argparse.Namespace) -> int:
    from cluster.local import init_ray
    from rllib_configs.runner import RunOptions, print_summary, run_training

    spec = train_spec(args)
    schema_name = Path(spec.algo_config.env_config["schema"]).parent.name
    opts = RunOptions(
        storage_path=Path(args.storage_path),
        seed=args.seed,
        stop_iters=args.stop_iters,
        stop_timesteps=args.stop_timesteps,
        time_budget_s=args.time_budget,
        num_env_runners=args.num_env_runners,
        name=args.name or f"citylearn_{spec.algorithm.lower()}_{schema_name}",  # the config's, not --algo's
    )
    init_ray(args.address, num_cpus=args.num_cpus)
    try:
        summary = run_training(spec, opts)
    except (FileExistsError, FileNotFoundError) as exc:
        print(f"gridrl citylearn train: {exc}", file=sys.stderr)
        return 2
    if args.evaluate and spec.algo_config.env_config.get("holdout_weeks"):
        from envs.citylearn.evaluate import evaluate_policy, kpi_table
        from rllib_configs.policy import load_policy

        out = Path(summary["trial_dir"]) / "heldout"
        results = evaluate_policy(load_policy(summary["checkpoint"]), out, seed=args.seed, progress=_say)
        _say(kpi_table(results))
        summary["evaluation"] = {"out": str(out), "targets": json.loads((out / "targets.json").read_text())}
    print_summary(summary)
    return 0


def _show_schema_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    from envs.citylearn.prepare import SchemaWarning

    if issubclass(category, SchemaWarning):
        print(f"gridrl citylearn: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def run(args: argparse.Namespace) -> int:
    """Run ``gridrl citylearn SUBCOMMAND``; a bad input prints one line naming the file and field, exit 2."""
    warnings.showwarning = _show_schema_warning
    try:
        if args.citylearn_command == "build-schema":
            return _build(args)
        if args.citylearn_command == "train":
            return _train(args)
        return _evaluate(args)
    except (ConfigError, OutputError) as exc:
        print(f"gridrl citylearn: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = _default_showwarning
