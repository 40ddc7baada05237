"""A local Ray head for tests and laptops: ``ray start --head --block`` on 127.0.0.1, owned by its PID.

Ray 2.60 turns token authentication on by default. :class:`LocalHead` starts the head with a token of
its own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``) and returns the environment a client needs to
submit jobs to it. It stops the head by signalling its own ``ray start --block`` process, which takes
down exactly the processes it started: never ``ray stop``, which stops every Ray of the user.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on loopback: every socket is held open until all are picked."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class HeadExited(RuntimeError):
    """``ray start --head --block`` exited before the head was ready."""


class HeadNotReady(TimeoutError):
    """The head runs but did not accept a job in time (e.g. its dashboard agent never came up)."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


class LocalHead:
    """``ray start --head`` on loopback with token auth; a context manager."""

    def __init__(self, workdir: Path, num_cpus: int = 2, token: str | None = None,
                 startup_timeout_s: float = 90.0, start_attempts: int = 3):
        self.workdir = Path(workdir)
        self.num_cpus = num_cpus
        self.token = token or secrets.token_hex(16)
        self.startup_timeout_s = startup_timeout_s
        self.start_attempts = start_attempts
        self.proc: subprocess.Popen | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        """Fresh, distinct free ports for every listener of the head."""
        names = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port",
                 "node-manager-port", "object-manager-port")
        # Ray's other listeners default to fixed ports (dashboard agent 52365, metrics 8080, ...): a second
        # Ray on the machine (a developer's, another test's) would take them, so every head gets its own.
        picked = dict(zip(names, free_ports(len(names)), strict=True))
        self.port = picked.pop("port")
        self.dashboard_port = picked.pop("dashboard-port")
        self.extra_ports = picked

    @property
    def address(self) -> str:
        """The Jobs API address."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def base_env(self) -> dict[str, str]:
        """Environment without any token: HOME points at an empty directory (no ~/.ray/auth_token)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def client_env(self) -> dict[str, str]:
        """Environment of a client holding the head's token."""
        return {**self.base_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @property
    def log_path(self) -> Path:
        return self.workdir / "head.log"

    def start(self) -> LocalHead:
        """Start the head and wait until it runs a job.

        A head whose ``ray start`` exits while starting (one of its processes died: on a loaded machine,
        most often a listener that lost its port to another process between our pick and its bind) or
        that does not accept a job within ``startup_timeout_s`` (its dashboard agent lost its port) is
        stopped and started again on fresh ports, up to ``start_attempts`` times; each failed attempt's
        log is kept as ``head.<n>.log`` and its tail is in the error if every attempt fails.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        failures: list[str] = []
        for attempt in range(1, self.start_attempts + 1):
            if attempt > 1:
                self._pick_ports()
            try:
                self._start_once()
                return self
            except (HeadExited, HeadNotReady) as exc:
                kept = self.workdir / f"head.{attempt}.log"
                self.log_path.replace(kept)
                failures.append(f"attempt {attempt}: {exc}; log {kept}:\n{_tail(kept)}")
        tried = "\n".join(failures)
        raise RuntimeError(f"Ray head did not start in {self.start_attempts} attempts:\n{tried}")

    def _start_once(self) -> None:
        ray_bin = str(Path(sys.executable).parent / "ray")
        cmd = [
            ray_bin, "start", "--head", "--block", f"--num-cpus={self.num_cpus}",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            "--include-dashboard=true", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in self.extra_ports.items()),
        ]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, env=self.client_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Wait until the head accepts a job: the Jobs API answers some seconds before its agent does."""
        deadline = time.monotonic() + self.startup_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HeadExited(f"ray start exited with {self.proc.returncode}")
            try:
                req = urllib.request.Request(f"{self.address}/api/version",
                                             headers={"Authorization": f"Bearer {self.token}"})
                urllib.request.urlopen(req, timeout=2).read()
            except OSError as exc:
                last = str(exc)
                time.sleep(1)
                continue
            probe = self.ray("job", "submit", "--address", self.address, "--", "true", timeout=60)
            if probe.returncode == 0:
                return
            last = (probe.stdout + probe.stderr)[-300:]
            time.sleep(2)
        raise HeadNotReady(
            f"Ray head not ready after {self.startup_timeout_s} s ({last}); see {self.log_path}")

    def ray(self, *args: str, with_token: bool = True, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this head (with or without its token)."""
        ray_bin = str(Path(sys.executable).parent / "ray")
        env = self.client_env() if with_token else self.base_env()
        return subprocess.run([ray_bin, *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop this head only: SIGTERM to its ``ray start --block`` process, which stops its children."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> LocalHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
