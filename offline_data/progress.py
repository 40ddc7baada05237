"""Progress of long work on stderr, drawn by tqdm: a bar per build stage (:class:`Progress`) and one line per
stage of a multi-stage job (:class:`Stages`: the pipeline's and ``gridrl retrain``'s).

On a terminal tqdm redraws the line in place (at most twice a second) and leaves it when the stage ends.
Elsewhere (CI logs, pipes, a file) nothing is redrawn: each stage writes one plain line, so a log holds
one line per stage and no carriage returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

_REDRAW_S = 0.5
"""tqdm's ``mininterval``: the fastest a bar redraws on a terminal."""


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _width(stream: TextIO) -> dict[str, Any]:
    """tqdm follows the terminal's width; a terminal reporting none (a container's pty) gets 100 columns."""
    try:
        if os.get_terminal_size(stream.fileno()).columns > 0:
            return {"dynamic_ncols": True}
    except (AttributeError, OSError, ValueError):
        pass
    return {"ncols": 100, "nrows": 24}


class Progress:
    """``with Progress("validate", total=6) as bar: ... bar.update(1, "2025-06-01")``.

    A tqdm bar on a terminal; elsewhere the same line (tqdm's format, ASCII) once, when the stage ends."""

    def __init__(
        self, stage: str, total: int, unit: str = "days", enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.stage, self.total, self.unit, self.enabled = stage, max(total, 0), unit, enabled
        self.stream = stream or sys.stderr
        self.tty = enabled and _is_tty(self.stream)
        self.done = 0
        self.note = ""
        self.t0 = time.perf_counter()
        self.bar: tqdm | None = None

    def __enter__(self) -> Progress:
        self.t0 = time.perf_counter()
        if self.tty:
            self.bar = tqdm(total=self.total, desc=f"{self.stage:<10}", unit=f" {self.unit}",
                            file=self.stream, mininterval=_REDRAW_S, leave=True, **_width(self.stream))
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(n)

    def line(self) -> str:
        """The stage's line as tqdm writes it, without the redraws (for logs)."""
        return tqdm.format_meter(self.done, self.total, time.perf_counter() - self.t0,
                                 prefix=f"{self.stage:<10}", ascii=True, unit=f" {self.unit}",
                                 postfix=self.note or None)  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write(self.line() + "\n")
            self.stream.flush()


class Stages:
    """Runs named stages with one progress line each (``PREFIX 3/9 NAME ... 12.3 s``) and keeps their
    timings (``timings``: seconds by stage name).

    On a terminal the line is a tqdm line whose elapsed time counts while the stage runs; elsewhere its
    start is written when the stage starts and its end when it ends. Either way nothing else may write to
    ``stream`` meanwhile (the main job's libraries write to its log: :mod:`scripts.quiet`)."""

    def __init__(self, total: int, stream: TextIO | None = None, prefix: str = "[pipeline]") -> None:
        self.total, self.done, self.prefix = total, 0, prefix
        self.timings: dict[str, float] = {}
        self.stream = stream or sys.stderr
        self.tty = _is_tty(self.stream)

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.done += 1
        head = f"{self.prefix} {self.done}/{self.total} {name} ..."
        bar, stop = (self._live(head) if self.tty else (None, None))
        if bar is None:
            self.stream.write(head)
            self.stream.flush()
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self._end(bar, stop, f" failed after {time.perf_counter() - t0:.1f} s")
            raise
        self.timings[name] = round(time.perf_counter() - t0, 1)
        self._end(bar, stop, f" {self.timings[name]} s")
        return result

    def _live(self, head: str) -> tuple[tqdm, threading.Event]:
        """A tqdm line showing the stage's elapsed time, redrawn by a timer thread (the stage's work does
        not call back)."""
        bar = tqdm(total=None, file=self.stream, bar_format="{desc} {elapsed}", desc=head,
                   mininterval=_REDRAW_S, leave=True, **_width(self.stream))  # fmt: skip
        stop = threading.Event()

        def redraw() -> None:
            while not stop.wait(1.0):
                bar.refresh()

        threading.Thread(target=redraw, name="stage-progress", daemon=True).start()
        return bar, stop

    def _end(self, bar: tqdm | None, stop: threading.Event | None, tail: str) -> None:
        if bar is None or stop is None:
            self.stream.write(tail + "\n")
            self.stream.flush()
            return
        stop.set()
        bar.bar_format = "{desc}" + tail.replace("{", "{{")
        bar.close()  # leave=True: the final line stays, with the newline
