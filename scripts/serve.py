"""``gridrl serve``: the policy server (serve/app.py) on Ray Serve, on loopback unless told otherwise.

    gridrl serve --bundle B --mode shadow                       # serve until Ctrl-C
    gridrl serve --bundle B --mode rollout --rollout-pct 25
    gridrl serve --bundle B --mode shadow --simulate-hours 1    # + an hour of simulator traffic, then stop

The admin token comes from ``$GRIDRL_SERVE_TOKEN`` / ``$GRIDRL_SERVE_TOKEN_FILE`` or ``--token-file``
(created with a random token if it does not exist); by default ``LOG_DIR/admin_token`` (mode 0600). The
first stdout line is JSON: the URL, the log folder, the token file. At exit (Ctrl-C, SIGTERM or the end of
the simulated traffic) Serve shuts down gracefully, every replica compacts its log, and the last stdout
line is JSON with the decisions logged and the raw-log folders ``gridrl data build --raw`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from scripts.flags import PORT, SEED, START_H, add_scenario, command_parser, float_in, int_at_least

APP_NAME = "gridrl-export"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = command_parser(sub, "serve", __doc__)
    p.add_argument("--bundle", required=True, help="bundle folder (gridrl export)")
    p.add_argument(
        "--mode",
        choices=["shadow", "ab", "rollout", "production"],
        default="shadow",
        help="shadow (PI acts, policy logged; default), ab (weekday-hour schedule), rollout, production",
    )
    p.add_argument(
        "--rollout-pct", type=float_in(0, 100), default=0.0, help="rollout mode: share of sites, 0-100"
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=PORT, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--seed",
        type=SEED,
        default=0,
        help="with --simulate-hours: the simulated day (gridrl simulate's days for the same seed)",
    )
    p.add_argument(
        "--config", default=None, help="YAML of serve/config.py ServeConfig keys (A/B, rollback...)"
    )
    p.add_argument("--log-dir", default=None, help="control state and logs (default $GRIDRL_STORAGE/serve)")
    p.add_argument("--token-file", default=None, help="admin token file, created if missing")
    p.add_argument(
        "--replicas", type=int_at_least(1), default=None, help="replicas of the server (default 1)"
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: embedded local Ray)")
    p.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        default=None,
        help="HTTP ingress: haproxy (default: HAProxy in front of the replicas' own HTTP servers) or proxy "
        "(Serve's Python proxy); see serve/launch.py",
    )
    p.add_argument("--num-cpus", type=int_at_least(1), default=2, help="CPUs of the embedded Ray (default 2)")
    p.add_argument(
        "--simulate-hours",
        type=float_in(0, lo_open=True),
        default=None,
        help="drive this many hours of simulated site traffic (1 request per simulated second), then stop",
    )
    add_scenario(p, "the simulated traffic")
    p.add_argument(
        "--start-hour", type=START_H, default=10.0, help="local start hour of the simulated traffic"
    )
    return p


def _token_file(args: argparse.Namespace, log_dir: Path) -> Path | None:
    """Where the admin token is (created if needed); None when it comes from the environment."""
    from serve.config import TOKEN_ENV, TOKEN_FILE_ENV

    if os.environ.get(TOKEN_ENV):
        return None
    path = Path(args.token_file or os.environ.get(TOKEN_FILE_ENV) or log_dir / "admin_token")
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    os.environ[TOKEN_FILE_ENV] = str(path)
    return path


def start(
    serve_args: dict[str, Any],
    host: str,
    port: int,
    address: str | None = None,
    num_cpus: int = 2,
    **launch: Any,
) -> tuple[str, bool]:
    """Start Ray (if needed) and Serve, deploy the application; returns (base URL, Ray started here).

    ``launch``: serve/launch.py switches (``ingress``, ``throughput_optimized``); their defaults are the
    measured ones."""
    from ray import serve

    from serve.app import build_app
    from serve.launch import start_serve

    started = start_serve(host, port, address=address, num_cpus=num_cpus, **launch)
    serve.run(build_app(serve_args), name=APP_NAME, route_prefix="/", blocking=False)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}", started


def stop(log_dir: Path, ray_started: bool) -> dict[str, Any]:
    """Shut Serve down (replicas compact their logs), compact what dead replicas left, summarise."""
    import ray
    from ray import serve

    from serve.decision_log import RAW_DIR, compact_orphans, read_decisions

    try:
        serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        if ray_started:
            ray.shutdown()
    orphans = compact_orphans(log_dir)
    decisions = read_decisions(log_dir, include_wal=True)
    raw = sorted(str(p) for p in (log_dir / RAW_DIR).iterdir()) if (log_dir / RAW_DIR).is_dir() else []
    return {
        "decisions": decisions.height,
        "by_source": dict(decisions.group_by("source").len().iter_rows()) if decisions.height else {},
        "compacted_at_exit": orphans,
        "raw": raw,
        "build": [f"gridrl data build --raw {r} --out {r}-dataset" for r in raw],
    }


def serve_and_drive(
    bundle: str,
    log_dir: Path,
    hours: float,
    seed: int = 0,
    mode: str = "shadow",
    port: int | None = None,
    address: str | None = None,
    num_cpus: int = 2,
    scenario: str = "broken_clouds",
    start_hour: float = 10.0,
) -> dict[str, Any]:
    """Serve ``bundle`` on loopback, drive ``hours`` of simulated traffic, stop: for `gridrl pipeline`."""
    from cluster.head import free_port
    from serve.traffic import drive

    log_dir = Path(log_dir)
    url, started = start(
        {"bundle": str(bundle), "mode": mode, "log_dir": str(log_dir)},
        "127.0.0.1",
        port or free_port(),
        address,
        num_cpus,
    )
    try:
        traffic = drive(url, hours, seed * 10_000, scenario=scenario, start_hour=start_hour).summary()
    finally:
        summary = stop(log_dir, started)
    return {"url": url, "traffic": traffic, **summary}


def run(args: argparse.Namespace) -> int:
    from envs.config import ConfigError
    from serve.bundle import BundleError
    from serve.config import ServeConfig
    from serve.domains import load_runtime

    serve_args: dict[str, Any] = {"bundle": args.bundle, "mode": args.mode, "rollout_pct": args.rollout_pct}
    if args.config:
        serve_args["config"] = args.config
    if args.log_dir:
        serve_args["log_dir"] = args.log_dir
    if args.replicas:
        serve_args["num_replicas"] = args.replicas
    try:
        cfg = ServeConfig.from_args(serve_args, source="gridrl serve")
        load_runtime(cfg.bundle)  # before starting anything (any domain's bundle: serve/domains.py)
        log_dir = cfg.resolved_log_dir()
        serve_args["log_dir"] = str(log_dir)
        token_file = _token_file(args, log_dir)
    except (ConfigError, BundleError, FileNotFoundError, ValueError) as exc:
        print(f"gridrl serve: {exc}", file=sys.stderr)
        return 2
    launch = {"ingress": args.ingress} if args.ingress else {}
    url, started = start(serve_args, args.host, args.port, args.address, args.num_cpus, **launch)
    print(
        json.dumps(
            {
                "url": url,
                "docs": f"{url}/docs",
                "mode": args.mode,
                "log_dir": str(log_dir),
                "token_file": str(token_file) if token_file else "$GRIDRL_SERVE_TOKEN",
            }
        ),
        flush=True,
    )
    traffic = None
    try:
        if args.simulate_hours is not None:
            from serve.traffic import drive

            result = drive(
                url,
                args.simulate_hours,
                args.seed * 10_000,
                scenario=args.scenario,
                start_hour=args.start_hour,
                progress=True,
            )
            traffic = result.summary()
        else:
            done = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: done.set())
            print(f"[serve] serving at {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            done.wait()
    finally:
        summary = stop(log_dir, started)
    print(json.dumps({"traffic": traffic, **summary}))
    return 0
