"""scripts/quiet.py: in quiet_console, what writes to fds 1 and 2 goes to the log; the job's lines do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = r"""
import logging, os, subprocess, sys, warnings
from scripts.quiet import quiet_console
with quiet_console(sys.argv[1]) as console:
    print("python stdout")
    print("python stderr", file=sys.stderr)
    warnings.warn("a library's DeprecationWarning", UserWarning)
    logging.getLogger("ray").warning("a logger's line")
    os.write(2, b"a C library's line\n")
    subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
    console.err.write("[job] stage 1/1 ... 0.1 s\n")
    console.out.write("the table\n")
print("after: stdout")
raise SystemExit(3)
"""


def test_quiet_console_sends_everything_but_the_jobs_lines_to_the_log(tmp_path):
    log = tmp_path / "logs" / "job.log"
    proc = subprocess.run(
        [sys.executable, "-c", JOB, str(log)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "the table\nafter: stdout\n"
    assert proc.stderr == "[job] stage 1/1 ... 0.1 s\n"
    text = log.read_text()
    for line in ("python stdout", "python stderr", "DeprecationWarning", "a logger's line",
                 "a C library's line", "a child process"):
        assert line in text, (line, text)
    assert "[job]" not in text and "the table" not in text
