"""The policy server's decision log: a write-ahead file per replica, compacted to Parquet in batches.

**Durability.** Each decision is one JSON line (:data:`RECORD_FIELDS`) appended with a single ``write(2)``
to the replica's active segment ``LOG_DIR/wal/<replica>-<pid>-<n>.jsonl`` *before* its response is sent:
a killed replica process loses no acknowledged decision (the kernel holds the bytes); the file is fsynced
every ``fsync_interval_s`` (0: before each response), which bounds what a power cut can take. A
segment is sealed every ``flush_interval_s`` or ``batch_rows`` decisions and compacted into Parquet files
named after it (written to a temporary name, then renamed: re-running a compaction rewrites the same files,
it never duplicates rows); only then is the segment deleted. The writer holds an exclusive ``flock`` on
its segments; a segment nobody holds belongs to a dead replica, and any replica's next flush compacts it
(:func:`compact_orphans`, also run by ``gridrl serve`` at exit). A line cut short by a kill was never
acknowledged and is skipped.

**Dedupe key.** ``key`` is the request's ``request_id`` (the server makes one when the client sends
none). A client retries a request whose answer it did not get with the same id; a replica answers a
retry it has already logged from its cache, and :func:`read_decisions` keeps the first row per key
(a retry that reached another replica is logged twice: at-least-once).

**Layout** (``LOG_DIR/``)::

    decisions/date=YYYY-MM-DD/part-<segment>.parquet      every decision: both proposals, checks, state
    raw/<site_id>/site.yaml                               the bundle's site (the build's action scale)
    raw/<site_id>/<stream>/date=YYYY-MM-DD/part-<segment>.parquet
                                                          the three raw-log streams of offline_data/schemas.py

``gridrl data build --raw LOG_DIR/raw/<site_id>`` builds a dataset from them (the shadow log closes the
retraining loop). How the streams are derived from the served states (the server sees states, not the
devices):

* ``meter_readings``: one row per request whose reading is fresh (``meter_age_s == 0``): ``ts`` the
  request's ``time_s``, ``seq`` its UTC second, export and PV per phase from the state;
* ``pi_state``: one row per request, ``ts`` 0.4 s into the second (as the simulated logs), ``cycle`` the
  second of the UTC day (the logged controller "starts" at UTC midnight, so cycles of different replicas
  agree), ``target_w`` the targets *sent*, ``available_w`` from the state, ``controlled_w`` the state's
  acknowledged commands (the server never sees the slaves' reports), ``integral_w`` the PI's integrator;
* ``zigbee_commands``: one virtual slave per phase (``phase_l1``..``l3``) whose acknowledged value is the
  state's ``acked_w``: a row when it changes, and on a replica's first request of a site and day
  (``retry`` true: a restatement, not a change), acknowledged 0.1 s before the second it shows in. The
  build's command-change count is therefore per phase, not per slave.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from envs.state_spec import FEAT
from offline_data.schemas import COMMANDS, METER, PI_STATE, arrow_schema
from serve.config import LogConfig

WAL_DIR = "wal"
DECISIONS_DIR = "decisions"
RAW_DIR = "raw"
PI_OFFSET_MS = 400
ACK_BEFORE_MS = 100
SENT_BEFORE_MS = 500
DAY_S = 86_400

RECORD_FIELDS = {
    "key": "dedupe key: the request id",
    "site_id": "site",
    "domain": "the bundle's domain (serve/domains.py); raw-log streams are written for export only",
    "time_s": "UTC time of the state's meter reading (s)",
    "served_at": "server's UTC time of the decision (s)",
    "mode": "shadow, ab, rollout or production",
    "rolled_back": "the deployment was rolled back to the PI",
    "source": "policy, pi or fallback: who produced action_w",
    "policy_acted": "the mode routed the request to the policy",
    "model_version": "bundle name and manifest sha256 prefix",
    "checks": "checks fired in the decision sent",
    "action_w": "targets sent (W, l1..l3)",
    "policy_action_w": "the policy gate's targets (W): the shadow proposal when the PI acted",
    "policy_source": "the policy gate's own source: policy, fallback or safe",
    "policy_checks": "checks fired in the policy gate",
    "pi_action_w": "the PI gate's targets (W)",
    "pi_checks": "checks fired in the PI gate",
    "z_max": "largest |z| of the monitored features (anomaly detector)",
    "policy_ms": "time the policy took (ms)",
    "pi_integral_w": "the PI's integrator after the decision (W)",
    "resumed": "the site's session resumed from the state (no continuity with this replica)",
    "replica": "replica id",
    "state": "the state vector (30 values, envs/state_spec.py order)",
    "commands": "virtual-slave command rows: [phase, value_w, retry]",
}


def _lock_nb(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class DecisionLog:
    """The write-ahead writer of one replica (module docstring).

    Args:
        log_dir: The deployment's log folder.
        replica: This replica's id (part of segment names).
        config: Batching and fsync settings.
        site_yaml: Site file copied to ``raw/<site>/site.yaml`` (the build's action scale); None = none.
    """

    def __init__(self, log_dir: str | Path, replica: str, config: LogConfig, site_yaml: Path | None = None):
        self.dir = Path(log_dir)
        self.wal = self.dir / WAL_DIR
        self.wal.mkdir(parents=True, exist_ok=True)
        self.replica, self.config, self.site_yaml = replica, config, site_yaml
        self._lock = threading.Lock()
        self._n = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self.rows = 0
        self.rows_total = 0
        self.compacted_rows = 0
        self.compactions = 0
        self._compactor: Any = None
        self.last_error: str | None = None
        self._open_segment()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    # --- the write path (the request's thread)

    def _open_segment(self) -> None:
        self._n += 1
        name = f"{self.replica}-{os.getpid()}-{time.time_ns()}-{self._n:06d}"
        tmp = self.wal / f".{name}.opening"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked before it gets a name a sweeper looks at
        final = self.wal / f"{name}.jsonl"
        os.replace(tmp, final)
        self._fd, self._path, self.rows = fd, final, 0

    def append(self, record: dict[str, Any]) -> None:
        """Write one decision; returns once it is in the file (and fsynced if fsync_interval_s is 0)."""
        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, data)
            if self.config.fsync_interval_s == 0:
                os.fsync(self._fd)
            self.rows += 1
            self.rows_total += 1
            full = self.rows >= self.config.batch_rows
        if full:
            self._kick.set()

    # --- sealing and compaction (the background thread)

    def _sync(self) -> None:
        """fsync the active segment without holding the write lock, so that no request's append waits
        for the disk (0.4 ms typical here, more while the compactor writes its Parquet files). The fsync
        goes through a duplicate of the descriptor, so that a seal closing the segment meanwhile cannot
        close it under the fsync; it syncs the same file, every byte written before it."""
        with self._lock:
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _seal(self) -> tuple[int, Path] | None:
        with self._lock:
            if self.rows == 0:
                return None
            old = (self._fd, self._path)
            os.fsync(self._fd)
            self._open_segment()
        return old

    def flush(self) -> int:
        """Seal the active segment, compact it and any orphaned ones; returns the rows compacted."""
        n = 0
        sealed = self._seal()
        if sealed is not None:
            fd, path = sealed
            try:
                n += compact_segment(path, self.dir, self.site_yaml)
                path.unlink()
            finally:
                os.close(fd)
        n += compact_orphans(self.dir, self.site_yaml)
        self.compacted_rows += n
        return n

    def _seal_for_compactor(self) -> None:
        """Seal the active segment and leave it to this replica's compactor process: the segment is
        closed (its lock released, so a sweeper may take it), and ``python -m serve.decision_log LOG_DIR
        --watch PID`` compacts every unlocked segment, off this process (its Parquet writes would hold
        the request loop's interpreter lock). The compactor is started at the first seal, again if it
        died, and ends with this process."""
        sealed = self._seal()
        if sealed is not None:
            os.close(sealed[0])
        proc = self._compactor
        if proc is not None and proc.poll() is None:
            return
        if proc is not None:
            self.last_error = f"compactor exited {proc.returncode}; restarted"
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "serve.decision_log", str(self.dir), "--watch", str(os.getpid()),
               "--interval", str(min(self.config.flush_interval_s, 5.0))]  # fmt: skip
        if self.site_yaml is not None:
            cmd += ["--site-yaml", str(self.site_yaml)]
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        self._compactor = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(10)
        )
        self.compactions += 1

    def _run(self) -> None:
        last_sync = time.monotonic()
        last_flush = time.monotonic()
        while not self._stop.is_set():
            wait = self.config.fsync_interval_s or self.config.flush_interval_s
            self._kick.wait(min(wait, self.config.flush_interval_s, 1.0))
            now = time.monotonic()
            try:
                if self.config.fsync_interval_s and now - last_sync >= self.config.fsync_interval_s:
                    self._sync()
                    last_sync = now
                if self._kick.is_set() or now - last_flush >= self.config.flush_interval_s:
                    self._kick.clear()
                    if self.config.compact_in_process:
                        self.flush()
                    else:
                        self._seal_for_compactor()
                    last_flush = now
            except Exception as exc:  # noqa: BLE001 - keep serving; the segment stays for the next try
                self.last_error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        """Stop the thread, compact everything this replica wrote, release the segment."""
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout=30)
        if self._compactor is not None and self._compactor.poll() is None:
            self._compactor.terminate()  # its writes are atomic renames; what it left, flush() below takes
            try:
                self._compactor.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self._compactor.kill()
        self.flush()
        with self._lock:
            if self._fd is not None:
                path, fd = self._path, self._fd
                self._fd = None
                if path is not None and path.exists() and path.stat().st_size == 0:
                    path.unlink()
                os.close(fd)

    @property
    def pending_rows(self) -> int:
        return self.rows

    @property
    def alive(self) -> bool:
        """The background thread runs (or was stopped on purpose)."""
        return self._thread.is_alive() or self._stop.is_set()


# --- compaction


def _read_segment(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                continue  # cut short by a kill: never acknowledged
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=1 << 20)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


_LIST_F = pl.List(pl.Float64)
_LIST_S = pl.List(pl.String)
DECISION_SCHEMA = {
    "key": pl.String,
    "site_id": pl.String,
    "domain": pl.String,
    "time_s": pl.Float64,
    "served_at": pl.Float64,
    "mode": pl.String,
    "rolled_back": pl.Boolean,
    "source": pl.String,
    "policy_acted": pl.Boolean,
    "model_version": pl.String,
    "checks": _LIST_S,
    "action_w": _LIST_F,
    "policy_action_w": _LIST_F,
    "policy_source": pl.String,
    "policy_checks": _LIST_S,
    "pi_action_w": _LIST_F,
    "pi_checks": _LIST_S,
    "z_max": pl.Float64,
    "policy_ms": pl.Float64,
    "pi_integral_w": pl.Float64,
    "resumed": pl.Boolean,
    "replica": pl.String,
    "state": _LIST_F,
}
assert set(DECISION_SCHEMA) == set(RECORD_FIELDS) - {"commands"}


def _decisions_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    cols = {k: [r.get(k) for r in rows] for k in DECISION_SCHEMA}
    cols["domain"] = [r.get("domain", "export") for r in rows]  # rows logged before the field existed
    return pl.DataFrame(cols, schema=DECISION_SCHEMA)


def _streams(rows: list[dict[str, Any]]) -> dict[str, pa.Table]:
    """The three raw streams of one site and day (module docstring)."""
    state = np.array([r["state"] for r in rows], np.float64)
    t = np.array([r["time_s"] for r in rows], np.float64)
    sec = np.round(t).astype(np.int64)
    sent = np.array([r["action_w"] for r in rows], np.float64)
    fresh = state[:, FEAT["meter_age_s"]] == 0
    ph = (1, 2, 3)
    meter = {
        "ts": np.round(t[fresh] * 1000).astype(np.int64),
        "seq": sec[fresh],
        **{f"export_w_l{p}": state[fresh, FEAT[f"export_w_l{p}"]] for p in ph},
        **{f"pv_w_l{p}": state[fresh, FEAT[f"pv_w_l{p}"]] for p in ph},
    }
    pi = {
        "ts": sec * 1000 + PI_OFFSET_MS,
        "cycle": sec % DAY_S,
        "setpoint_w": state[:, FEAT["setpoint_w"]],
        "error_w": state[:, FEAT["export_error_w"]],
        "integral_w": np.array([r.get("pi_integral_w") or 0.0 for r in rows], np.float64),
        **{f"target_w_l{p}": sent[:, p - 1] for p in ph},
        **{f"available_w_l{p}": state[:, FEAT[f"available_w_l{p}"]] for p in ph},
        **{f"controlled_w_l{p}": state[:, FEAT[f"acked_w_l{p}"]] for p in ph},
    }
    cmd = [(s, c) for s, r in zip(sec, rows, strict=True) for c in r.get("commands") or []]
    commands = {
        "ts": np.array([s * 1000 - SENT_BEFORE_MS for s, _ in cmd], np.int64),
        "slave_id": [f"phase_l{int(c[0])}" for _, c in cmd],
        "phase": np.array([int(c[0]) for _, c in cmd], np.int64),
        "seq": np.array([s for s, _ in cmd], np.int64),
        "value_w": np.array([float(c[1]) for _, c in cmd], np.float64),
        "retry": np.array([bool(c[2]) for _, c in cmd], bool),
        "ack_ts": np.array([s * 1000 - ACK_BEFORE_MS for s, _ in cmd], np.int64),
    }
    out = {}
    for stream, data in ((METER, meter), (PI_STATE, pi), (COMMANDS, commands)):
        schema = arrow_schema(stream)
        arrays = []
        for f in schema:
            v = data[f.name]
            if pa.types.is_timestamp(f.type):
                arrays.append(pa.array(np.asarray(v, np.int64), pa.int64()).cast(f.type))
            else:
                arrays.append(pa.array(v, f.type))
        out[stream.name] = pa.Table.from_arrays(arrays, schema=schema)
    return out


def _date(second: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(round(second)))


def compact_segment(path: Path, log_dir: Path, site_yaml: Path | None = None) -> int:
    """Write one sealed segment's decisions and raw streams to Parquet (idempotent); returns the rows."""
    rows = _read_segment(path)
    if not rows:
        return 0
    part = f"part-{path.stem}.parquet"
    by_date: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_date.setdefault(_date(r["time_s"]), []).append(r)
    for date, rs in by_date.items():
        _write_parquet(_decisions_frame(rs).to_arrow(), log_dir / DECISIONS_DIR / f"date={date}" / part)
        by_site: dict[str, list[dict[str, Any]]] = {}
        for r in rs:
            if r.get("domain", "export") == "export":
                by_site.setdefault(r["site_id"], []).append(r)
        for site, srows in by_site.items():
            root = log_dir / RAW_DIR / site
            for stream, table in _streams(srows).items():
                if table.num_rows:
                    _write_parquet(table, root / stream / f"date={date}" / part)
            if site_yaml is not None and not (root / "site.yaml").exists():
                tmp = root / ".site.yaml.tmp"
                shutil.copyfile(site_yaml, tmp)
                os.replace(tmp, root / "site.yaml")
    return len(rows)


def compact_orphans(log_dir: str | Path, site_yaml: Path | None = None) -> int:
    """Compact and delete every segment no live writer holds (a dead replica's); returns the rows."""
    wal = Path(log_dir) / WAL_DIR
    n = 0
    for path in sorted(wal.glob("*.jsonl")) if wal.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            if not _lock_nb(fd):
                continue  # a live writer's segment
            if not path.exists():
                continue  # compacted by another sweeper meanwhile
            n += compact_segment(path, Path(log_dir), site_yaml)
            path.unlink()
        finally:
            os.close(fd)
    return n


# --- reading


def _decision_files(log_dir: Path) -> Iterable[Path]:
    return sorted((log_dir / DECISIONS_DIR).glob("date=*/part-*.parquet"))


def read_decisions(log_dir: str | Path, include_wal: bool = True) -> pl.DataFrame:
    """Every logged decision, one row per dedupe key (the first), sorted by time.

    ``include_wal`` adds the rows still in write-ahead segments (live or orphaned), so the result holds
    every acknowledged decision whether or not it was compacted yet. Segments are read before the
    Parquet files: a segment compacted in between is then found in the Parquet files.
    """
    log_dir = Path(log_dir)
    frames = []
    if include_wal and (log_dir / WAL_DIR).is_dir():
        for seg in sorted((log_dir / WAL_DIR).glob("*.jsonl")):
            try:
                rows = _read_segment(seg)
            except FileNotFoundError:
                continue
            if rows:
                frames.append(_decisions_frame(rows))
    frames += [pl.read_parquet(p) for p in _decision_files(log_dir)]
    if not frames:
        return _decisions_frame([])
    df = pl.concat(frames, how="vertical_relaxed")
    return df.sort("served_at").unique("key", keep="first", maintain_order=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m serve.decision_log LOG_DIR [--site-yaml Y] [--watch PID --interval S]``: compact every
    segment no writer holds; with ``--watch``, again every S seconds until process PID ends."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m serve.decision_log", description=main.__doc__)
    ap.add_argument("log_dir")
    ap.add_argument("--site-yaml", type=Path, default=None)
    ap.add_argument("--watch", type=int, default=None)
    ap.add_argument("--interval", type=float, default=5.0)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while True:
        while compact_orphans(args.log_dir, args.site_yaml) and not stop.is_set():
            pass  # a segment sealed meanwhile is taken too
        if args.watch is None or stop.wait(args.interval):
            return 0
        try:
            os.kill(args.watch, 0)
        except ProcessLookupError:
            compact_orphans(args.log_dir, args.site_yaml)
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
