"""A progress bar per build stage, on stderr (no dependency).

On a terminal the bar redraws in place; elsewhere (CI logs, pipes) each stage prints one line when it
ends, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
