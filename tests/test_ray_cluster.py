"""The shared test cluster is what the tests claim: two real nodes, reachable by CLI subprocesses."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration  # whole stack: the two-node Ray cluster


def test_two_real_nodes(ray_cluster):
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    resources = ray.cluster_resources()
    assert resources["CPU"] == ray_cluster.head_cpus + ray_cluster.worker_cpus
    assert resources.get("head") == 1 and resources.get("node2") == 1
    assert os.environ["RAY_ADDRESS"] == ray_cluster.address
