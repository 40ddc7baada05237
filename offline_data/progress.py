"""Progress of long work on stderr (no dependency): a bar per build stage (:class:`Progress`) and one line
per stage of a multi-stage job (:class:`Stages`: the pipeline's and ``gridrl retrain``'s).

On a terminal the bar redraws in place; elsewhere (CI logs, pipes) each stage prints one line when it
ends, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


class Progress:
    """``with Progress("validate", total=6) as bar: ... bar.update(1, "2025-06-01")``."""

    def __init__(
        self, stage: str, total: int, unit: str = "days", enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.stage, self.total, self.unit, self.enabled = stage, max(total, 0), unit, enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.note = ""
        self.t0 = time.perf_counter()
        self.tty = enabled and self.stream.isatty()

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note
        self._draw()

    def _line(self) -> str:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(round(frac * width))
        secs = time.perf_counter() - self.t0
        return (
            f"{self.stage:<10} [{bar:<{width}}] {self.done}/{self.total} {self.unit} "
            f"{secs:6.1f} s {self.note}"
        )

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._line()[:120].ljust(120))
            self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + self._line()[:120].ljust(120) + "\n")
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()


class Stages:
    """Runs named stages with one progress line each (``PREFIX 3/9 NAME ... 12.3 s``) and keeps their
    timings. The line's start is written when the stage starts and its end when it ends: nothing else may
    write to ``stream`` meanwhile."""

    def __init__(self, total: int, stream: TextIO | None = None, prefix: str = "[pipeline]") -> None:
        self.total, self.done, self.prefix = total, 0, prefix
        self.timings: dict[str, float] = {}
        self.stream = stream or sys.stderr

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.done += 1
        self.stream.write(f"{self.prefix} {self.done}/{self.total} {name} ...")
        self.stream.flush()
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self.stream.write(f" failed after {time.perf_counter() - t0:.1f} s\n")
            raise
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self.stream.write(f" {self.timings[name]} s\n")
        self.stream.flush()
        return result
