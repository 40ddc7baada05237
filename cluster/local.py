"""Starting or joining Ray: the one place gridrl calls ``ray.init``.

Defaults are sized for one laptop or a 2-core CI box: an embedded local Ray on 127.0.0.1 with 2 CPUs
and a small object store. Under ``ray job submit`` (RAY_ADDRESS set) or with ``--address``, gridrl
joins the existing cluster instead and sizes nothing itself.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_NUM_CPUS = 2
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int | None = None,
    **kwargs: Any,
) -> Any:
    """Start an embedded local Ray, or connect to ``address`` / ``$RAY_ADDRESS``. Idempotent.

    Args:
        address: A cluster address ("auto", "ray://...", "127.0.0.1:6379"); None = $RAY_ADDRESS, else local.
        num_cpus: CPUs of the local Ray (ignored when joining a cluster). Default 2.
        object_store_bytes: Object store of the local Ray. Default 512 MiB.
        **kwargs: Passed to ``ray.init``.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    # Workers import gridrl from the repository root (``--working-dir .`` does the same on a cluster).
    kwargs.setdefault("log_to_driver", True)
    if address:
        return ray.init(address=address, **kwargs)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # address="local": always a new embedded Ray. A bare ray.init() would join any Ray cluster running on
    # the machine (another user's `ray start`), with other CPUs and other people's processes.
    return ray.init(
        address="local",
        num_cpus=num_cpus or DEFAULT_NUM_CPUS,
        object_store_memory=object_store_bytes or DEFAULT_OBJECT_STORE_BYTES,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        **kwargs,
    )
