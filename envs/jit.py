"""Optional numba compilation for gridrl's loop kernels (simulator step, features, dispatcher).

The kernels are plain Python over numpy arrays. With numba installed they are compiled (and cached on
disk); without it, or with ``GRIDRL_NO_JIT=1``, the same code runs as Python. The edge runtime relies on
this: it needs numpy and onnxruntime alone, and runs the very dispatcher and feature code the simulator
runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

JIT_ENABLED = False
if os.environ.get("GRIDRL_NO_JIT", "") not in ("1", "true", "yes"):
    try:
        import numba

        JIT_ENABLED = True
    except ImportError:  # the edge box: numpy + onnxruntime only
        pass


def kernel(fn: F) -> F:
    """Compile ``fn`` with ``numba.njit(cache=True)`` when numba is available; else return it unchanged."""
    if JIT_ENABLED:
        return numba.njit(cache=True, nogil=True)(fn)  # type: ignore[no-any-return]
    return fn
