"""Optional numba compilation for gridrl's loop kernels (simulator step, features, dispatcher).

The kernels are plain Python over numpy arrays. With numba installed they are compiled (and cached on
disk); without it, or with ``GRIDRL_NO_JIT=1``, the same code runs as Python. The edge runtime relies on
this: it needs numpy and onnxruntime alone, and runs the very dispatcher and feature code the simulator
runs.

The disk cache lives in ``envs/__pycache__/numba-<digest>``, one folder per content of the envs/ sources
(unless ``NUMBA_CACHE_DIR`` is set). Numba checks a cached kernel against its own file only, so a kernel
that calls a changed kernel of another file (the simulator's step calls state_spec's ``feature_row``) would
otherwise run the old callee: on 2026-12-07 a new state feature stayed at its first value in every
episode, silently, because the step kernel came from the cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

JIT_ENABLED = False
if os.environ.get("GRIDRL_NO_JIT", "") not in ("1", "true", "yes"):
    try:
        import numba

        JIT_ENABLED = True
    except ImportError:  # the edge box: numpy + onnxruntime only
        pass


def sources_digest() -> str:
    """sha256 (16 hex) of every envs/ source file: the kernels and all they call."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


if JIT_ENABLED and not os.environ.get("NUMBA_CACHE_DIR"):
    numba.config.CACHE_DIR = str(Path(__file__).resolve().parent / "__pycache__" / f"numba-{sources_digest()}")


def kernel(fn: F) -> F:
    """Compile ``fn`` with ``numba.njit(cache=True)`` when numba is available; else return it unchanged."""
    if JIT_ENABLED:
        return numba.njit(cache=True, nogil=True)(fn)  # type: ignore[no-any-return]
    return fn
