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

:func:`ray_job` is the two together, as ``gridrl pipeline`` and ``gridrl retrain`` run: OUT/NAME.log, Ray
started inside it, and :meth:`RayJob.finish` for the end both print (``shipped: ...``, OUT/report.json with
the wall time and the logs, the JSON summary).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


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


@dataclass
class RayJob:
    """A job run by :func:`ray_job`: its console, folder, log and Ray's log folder, and its start."""

    console: Console
    out: Path
    name: str
    ray_logs: str | None
    t0: float

    @property
    def logs(self) -> dict[str, str | None]:
        """Where the job's logs are: ``{NAME: OUT/NAME.log, "ray": Ray's session log folder}``."""
        return {self.name: str(self.console.log), "ray": self.ray_logs}

    def finish(self, report: dict[str, Any], who: str, summary: dict[str, Any]) -> None:
        """After the tables: the line ``shipped: WHO: why`` (``report["shipped"]["reason"]``); the wall time
        and :attr:`logs` added to ``report``, written to OUT/report.json; then the JSON summary line, that
        file, the wall time and the logs with ``summary``'s keys."""
        from rllib_configs.runner import print_summary

        print(f"shipped: {who}: {report['shipped']['reason']}")
        report["wall_s"] = round(time.perf_counter() - self.t0, 1)
        report["logs"] = self.logs
        path = self.out / "report.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        print_summary({"report": str(path), "wall_s": report["wall_s"], **summary, "logs": self.logs})


@contextmanager
def ray_job(out: Path, name: str, address: str | None, num_cpus: int | None) -> Iterator[RayJob]:
    """A quiet console writing to OUT/NAME.log, with Ray started inside it (cluster/local.py ``init_ray`` at
    ``address``, or an embedded one of ``num_cpus``; ``log_to_driver=False``). On an exception the terminal
    gets ``[NAME] the log of this run: ...`` before the traceback; Ray is shut down on the way out."""
    t0 = time.perf_counter()
    with quiet_console(out / f"{name}.log") as console:
        import ray  # importing Ray, RLlib and torch can warn too: inside

        from cluster.local import init_ray

        try:
            init_ray(address, num_cpus=num_cpus, log_to_driver=False)
            yield RayJob(console, out, name, ray_logs_dir(), t0)
        except BaseException:
            console.err.write(f"[{name}] the log of this run: {console.log}\n")
            raise
        finally:
            ray.shutdown()
