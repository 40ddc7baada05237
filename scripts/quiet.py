"""A quiet console for a long job: what the libraries write goes to a log file, the job's lines to the user.

``gridrl pipeline`` runs Ray, RLlib, Tune, Ray Data and Serve in its own process. They write deprecation
warnings, actor notices, progress boxes and log lines to the process's stdout and stderr, from Python and
from C++ alike. Inside :func:`quiet_console` file descriptors 1 and 2 both point at a log file, so all of
that lands there, in order, with the job's own detail lines ("[train] ..." per iteration, "[evaluate] ...");
the job writes what the user should see (one progress line per stage, the tables, the JSON summary) through
the :class:`Console` it gets, which holds copies of the original descriptors. The descriptors are restored
on the way out, exception or not, so a traceback reaches the terminal.

Ray's worker processes write to their own files under Ray's session folder: start Ray with
``log_to_driver=False`` so they are not streamed to the driver (:func:`ray_logs_dir` says where they are).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


@dataclass
class Console:
    """The terminal of a job whose stdout and stderr go to ``log``."""

    out: TextIO
    """The original stdout: tables and the JSON summary."""
    err: TextIO
    """The original stderr: progress lines."""
    log: Path
    """Where everything else goes."""


@contextmanager
def quiet_console(log: str | Path) -> Iterator[Console]:
    """Send file descriptors 1 and 2 to ``log`` (appended, created with its folder) while the block runs."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    out = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    err = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield Console(out, err, log)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)
        out.close()
        err.close()


def ray_logs_dir() -> str | None:
    """The log folder of the Ray session this process started or joined (None without Ray)."""
    try:
        import ray
        from ray._private import worker  # Ray 2.60 has no public accessor for the session's folder
    except ImportError:
        return None
    node = getattr(worker, "_global_node", None)
    if not ray.is_initialized() or node is None:
        return None
    return node.get_logs_dir_path()
