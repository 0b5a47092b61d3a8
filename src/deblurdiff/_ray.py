"""Connecting to Ray: an existing cluster when one is named, else a local instance.

Every entry point (synth, train, serve, demo) goes through ``connect`` so that ``--address`` and
``RAY_ADDRESS`` mean the same everywhere.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def connect(address: str | None = None, *, dashboard: bool = False, **init_kwargs):
    """``ray.init`` against ``address`` (or ``RAY_ADDRESS``; ``"auto"`` finds a cluster started on this
    machine with ``ray start``), or a new local instance when neither is given. ``dashboard``: a local
    instance starts Ray's dashboard, which serves the state API (Ray Train polls it); a cluster has its own."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS") or None
    init_kwargs.setdefault("logging_level", logging.WARNING)
    init_kwargs.setdefault("log_to_driver", True)
    if address is None or address == "local":
        # "local", not None: ray.init(address=None) would silently join any `ray start` cluster
        # listed in /tmp/ray/ray_current_cluster. A cluster is used only when it is named.
        # No dashboard unless asked (it costs seconds on 2 cores), no usage stats.
        address = "local"
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        init_kwargs["include_dashboard"] = dashboard
        if dashboard:
            # Ray's state API finds the dashboard through /tmp/ray/ray_current_cluster, which may name
            # another (even a dead) cluster on this machine: Ray Train's PlacementGroupCleaner then
            # times out with a traceback. Name ours; the processes this instance starts inherit it.
            port = free_port()
            init_kwargs.update(dashboard_host="127.0.0.1", dashboard_port=port)
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    logger.info("connecting to Ray at %s", address)
    return ray.init(address=address, **init_kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_cpus() -> int:
    """Whole logical CPUs in the connected cluster (used to size actor pools and trainers)."""
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
