"""The deployment's control state, shared by its replicas and kept across restarts: ``LOG_DIR/control.json``.

It holds the deployment's default mode, rollout percentage and bundle, an automatic rollback, if any
(when, which trigger, the numbers that fired it), per-site settings under ``sites`` (serve/fleet.py),
and a history of every change. Admin calls and the
rollback monitor change it; every replica re-reads it (serve/config.py ``control_poll_s``), so a rollback
detected by one replica moves them all to the PI, and a replica that was killed and restarted comes back
in the state the deployment was in, not in the one it was deployed with.

A new deployment (``serve deploy`` / ``gridrl serve`` with other ``bundle``, ``mode`` or ``rollout_pct``
than the file records under ``deployed``) starts afresh: the operator's latest deploy wins over earlier
admin changes. Writes are atomic (temporary file, fsync, rename) under an exclusive lock on
``control.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FILE = "control.json"
LOCK = "control.lock"
HISTORY = 200


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new file, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ControlStore:
    """Read and change ``LOG_DIR/control.json`` (module docstring)."""

    def __init__(self, log_dir: str | Path):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILE
        self._cache: tuple[tuple[int, int], dict[str, Any]] | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_file(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:  # atomic writes make this a hand edit gone wrong
            raise RuntimeError(f"{self.path}: not valid JSON ({exc}); fix or remove it") from exc

    def _write(self, state: dict[str, Any]) -> None:
        write_atomic(self.path, json.dumps(state, indent=1) + "\n")
        self._cache = None

    def init(
        self, deployed: dict[str, Any], bundle_sha256: str, sites: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The state to start from: the file's if it was made by this deployment, else a fresh one
        (``sites``: the deployment's per-site settings, serve/fleet.py)."""
        with self._locked():
            state = self._read_file()
            if state is not None and state.get("deployed") == deployed:
                return state
            fresh = {
                "deployed": deployed,
                "mode": deployed["mode"],
                "rollout_pct": deployed["rollout_pct"],
                "bundle": deployed["bundle"],
                "bundle_sha256": bundle_sha256,
                "rolled_back": None,
                "sites": sites or {},
                "version": (state or {}).get("version", 0) + 1,
                "history": [
                    *((state or {}).get("history", [])[-HISTORY + 1 :]),
                    {"at": _now_iso(), "event": "deployed", **deployed},
                ],
            }
            self._write(fresh)
            return fresh

    def read(self) -> dict[str, Any]:
        """The current state (re-read only when the file changed)."""
        st = os.stat(self.path)
        key = (st.st_mtime_ns, st.st_size)
        if self._cache is None or self._cache[0] != key:
            state = self._read_file()
            if state is None:
                raise RuntimeError(f"{self.path}: control state missing")
            self._cache = (key, state)
        return self._cache[1]

    def update(
        self, change: Callable[[dict[str, Any]], dict[str, Any] | None], event: dict[str, Any]
    ) -> dict:
        """Apply ``change`` (returns the fields to set, or None for no change) and record ``event``."""
        with self._locked():
            state = self._read_file() or {}
            fields = change(state)
            if fields is None:
                return state
            state.update(fields)
            state["version"] = state.get("version", 0) + 1
            state["history"] = [*state.get("history", [])[-HISTORY + 1 :], {"at": _now_iso(), **event}]
            self._write(state)
            return state
