"""offline_data/progress.py: tqdm draws the bars on a terminal; a log (a pipe, a file) gets one plain line per
stage and no carriage return (the main job's "one progress line per stage")."""

from __future__ import annotations

import io
import os
import select
import time

import pytest

from offline_data.progress import Progress, Stages


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def _read_all(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        out += os.read(fd, 65536)
    return out.decode()


@pytest.fixture
def terminal():
    """A pseudo-terminal: (the stream our code writes to, a function returning what the terminal got)."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", buffering=1)
    yield stream, lambda: _read_all(master)
    stream.close()
    os.close(master)


def test_stages_write_one_plain_line_per_stage_to_a_log():
    log = _Pipe()
    stages = Stages(3, stream=log, prefix="[job]")
    assert stages.run("add", lambda a, b: a + b, 2, 3) == 5
    stages.run("sleep", time.sleep, 0.15)
    with pytest.raises(ZeroDivisionError):
        stages.run("divide", lambda: 1 / 0)
    lines = log.getvalue().split("\n")
    assert "\r" not in log.getvalue() and lines[-1] == ""
    assert lines[0].startswith("[job] 1/3 add ... ") and lines[0].endswith(" s")
    assert lines[1] == f"[job] 2/3 sleep ... {stages.timings['sleep']} s"
    assert lines[2].startswith("[job] 3/3 divide ... failed after ")
    assert len(lines) == 4
    assert set(stages.timings) == {"add", "sleep"} and 0.1 <= stages.timings["sleep"] < 1.0


def test_build_bar_is_one_line_in_a_log_and_nothing_when_disabled():
    log = _Pipe()
    with Progress("validate", 4, "days", stream=log) as bar:
        for d in ("2025-06-01", "2025-06-02", "2025-06-03", "2025-06-04"):
            bar.update(1, d)
    text = log.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert text.startswith("validate  : 100%|") and "4/4" in text and "days/s" in text
    assert "2025-06-04" in text
    quiet = _Pipe()
    with Progress("validate", 4, stream=quiet, enabled=False) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_on_a_terminal_tqdm_redraws_the_line_and_leaves_it(terminal):
    stream, received = terminal
    with Progress("scan", 3, "files", stream=stream) as bar:
        for _ in range(3):
            bar.update(1)
    stages = Stages(1, stream=stream, prefix="[job]")
    stages.run("wait", time.sleep, 1.3)  # the timer thread redraws the elapsed time once a second
    stream.flush()
    text = received()
    scan, rest = text.split("\n", 1)
    assert scan.count("\r") >= 2 and "3/3" in scan.split("\r")[-2] and "100%" in scan  # redrawn in place
    live = [part for part in rest.split("\r") if part.startswith("[job] 1/1 wait ... ")]
    assert any(p.rstrip().endswith("00:01") for p in live), live  # the elapsed time counted while it ran
    assert live[-1].rstrip() == f"[job] 1/1 wait ... {stages.timings['wait']} s"
