"""Helpers for the pipeline fault tests: find a running actor pool's processes, wait for a condition."""

from __future__ import annotations

import time


def alive_actor_pids(class_name: str) -> list[int]:
    """PIDs of the live actors whose class name contains ``class_name`` (e.g. "ShardBuilder", "Restorer")."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000)
    return [a.pid for a in actors if class_name in a.class_name and a.pid]


def wait_for(condition, timeout: float, what: str, poll: float = 0.05):
    """``condition()``'s first truthy value within ``timeout`` seconds; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")
