"""infra/ray-cluster-aws.yaml against Ray's own launcher schema, and against the KubeRay node types."""

from __future__ import annotations

import copy
import json
import os

import jsonschema
import pytest
import yaml

from _infra import LAUNCHER, KUBERAY, all_groups, container, load_yaml_docs


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def ray_schema() -> dict:
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


def test_validates_against_ray_schema_json():
    jsonschema.validate(launcher(), ray_schema())


def test_ray_accepts_it_as_ray_up_would():
    """`ray up` runs prepare_config (defaults merged, docker checked) then validate_config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher()))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_rejects_unknown_keys():
    bad = launcher()
    bad["available_node_types"]["gpu"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(bad, ray_schema())


def _kuberay_ray_resources(group: dict) -> dict:
    """Ray CPUs/GPUs a KubeRay pod advertises: rayStartParams override, else container limits."""
    params, limits = group.get("rayStartParams", {}), container(group)["resources"]["limits"]
    cpus = int(params.get("num-cpus", limits["cpu"]))
    gpus = int(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return {"CPU": cpus, "GPU": gpus}


def test_same_node_types_as_the_kuberay_cluster():
    (cluster,) = load_yaml_docs(KUBERAY / "raycluster.yaml")
    groups = all_groups(cluster)
    config = launcher()
    node_types = config["available_node_types"]
    assert set(node_types) == set(groups), "launcher node types and KubeRay groups must be the same"
    assert config["head_node_type"] == "head"
    for name, node_type in node_types.items():
        resources = {"CPU": 0, "GPU": 0, **node_type["resources"]}
        assert resources == _kuberay_ray_resources(groups[name]), name
        if name != "head":
            assert node_type["min_workers"] == groups[name]["minReplicas"], name
            assert node_type["max_workers"] == groups[name]["maxReplicas"], name
    assert config["max_workers"] >= sum(t.get("max_workers", 0) for t in node_types.values())


def test_same_image_workdir_and_shared_mount_as_the_pods():
    (cluster,) = load_yaml_docs(KUBERAY / "raycluster.yaml")
    head = container(all_groups(cluster)["head"])
    docker = launcher()["docker"]
    assert docker["image"] == head["image"]
    assert f"-w {head['workingDir']}" in docker["run_options"]
    (shared,) = [m["mountPath"] for m in head["volumeMounts"] if m["name"] == "shared"]
    assert f"-v {shared}:{shared}" in docker["run_options"]
    assert any(shared in cmd for cmd in launcher()["initialization_commands"]), "mount the shared FS on the host"
