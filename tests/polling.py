"""Waiting in tests: poll a predicate until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    """The first truthy value of ``pred()`` within ``timeout_s``; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll_s)
    raise TimeoutError(what)
