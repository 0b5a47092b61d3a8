"""The KubeRay manifests in infra/kuberay, strictly against the ray.io/v1 CRDs vendored in tests/infra/kuberay-crds."""

from __future__ import annotations

import pytest

from _infra import (RAY_KINDS, all_groups, cluster_spec, container, manifests,
                    metadata_problems, ray_manifests, schema_errors)


def _ids(items):
    return [f"{path.name}:{doc.get('kind')}" for path, doc in items]


RAY_DOCS = ray_manifests()


def test_the_expected_resources_exist():
    kinds = sorted(doc["kind"] for _, doc in RAY_DOCS)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService"]
    assert all(doc["apiVersion"] == "ray.io/v1" for _, doc in RAY_DOCS)
    other = [(p.name, d.get("kind")) for p, d in manifests() if d.get("apiVersion") != "ray.io/v1"]
    assert other == [("pvc.yaml", "PersistentVolumeClaim")]


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=_ids(RAY_DOCS))
def test_manifest_matches_the_crd_schema_strictly(path, doc):
    assert schema_errors(doc) == []


@pytest.mark.parametrize("kind", RAY_KINDS)
def test_strict_schema_rejects_unknown_and_mistyped_fields(kind):
    """The validator can fail: a misspelt key deep in a pod spec and a wrong type are caught."""
    (_, doc), *_ = ray_manifests(kind)
    import copy

    bad = copy.deepcopy(doc)
    spec = cluster_spec(bad)
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    spec["workerGroupSpecs"][0]["minReplicas"] = "zero"
    errors = "\n".join(schema_errors(bad))
    assert "imagePullPolcy" in errors and "maxReplica" in errors and "'zero' is not of type 'integer'" in errors


@pytest.mark.parametrize("path,doc", manifests(), ids=_ids(manifests()))
def test_metadata_is_sane(path, doc):
    assert metadata_problems(doc["metadata"]) == []
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "deblurdiff"
    assert "namespace" not in doc["metadata"], "leave the namespace to `kubectl -n`"
    if doc["kind"] in RAY_KINDS:
        for name, group in all_groups(doc).items():
            problems = metadata_problems(group["template"].get("metadata", {}), needs_name=False)
            assert problems == [], f"{name} pod template: {problems}"


def test_metadata_check_can_fail():
    assert metadata_problems({"name": "Deblur_Diff", "labels": {"a": "b c"}, "lables": {}}) != []


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=_ids(RAY_DOCS))
def test_autoscaling_v2_is_on(path, doc):
    spec = cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]


# ----------------------------------------------------------------------------- consistency
def _without_counts(group: dict) -> dict:
    return {k: v for k, v in group.items() if k not in ("replicas", "minReplicas", "maxReplicas")}


def test_groups_of_the_same_name_are_identical_everywhere():
    """Each RayJob/RayService repeats the RayCluster's groups: they may size them, not change them."""
    seen: dict[str, tuple[str, dict]] = {}
    for path, doc in RAY_DOCS:
        spec = cluster_spec(doc)
        assert spec["autoscalerOptions"] == cluster_spec(RAY_DOCS[0][1])["autoscalerOptions"], path.name
        for name, group in all_groups(doc).items():
            if name in seen:
                first_path, first = seen[name]
                assert _without_counts(group) == _without_counts(first), f"{name}: {path.name} != {first_path}"
            else:
                seen[name] = (path.name, group)
    assert {"head", "cpu-data", "gpu", "gpu-serve"} <= set(seen)


def test_every_pod_runs_the_same_image_from_the_repo_root():
    images, workdirs = set(), set()
    for _, doc in RAY_DOCS:
        for group in all_groups(doc).values():
            images.add(container(group)["image"])
            workdirs.add(container(group)["workingDir"])
    assert len(images) == 1 and workdirs == {"/app"}, (images, workdirs)


def test_volumes_reference_the_shared_claim_and_dshm():
    ((_, pvc),) = [(p, d) for p, d in manifests() if d.get("kind") == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "all pods of a run write checkpoints to it"
    assert pvc["spec"]["resources"]["requests"]["storage"]
    for path, doc in RAY_DOCS:
        for name, group in all_groups(doc).items():
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for mount in container(group)["volumeMounts"]:
                assert mount["name"] in volumes, f"{path.name} {name}: mount {mount['name']} has no volume"
            claims = [v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v]
            assert set(claims) <= {pvc["metadata"]["name"]}, f"{path.name} {name}: unknown claim {claims}"
            assert volumes["dshm"]["emptyDir"]["medium"] == "Memory", "Ray's object store needs a real /dev/shm"


def test_gpu_groups_ask_kubernetes_for_gpus():
    for path, doc in RAY_DOCS:
        for name, group in all_groups(doc).items():
            resources = container(group)["resources"]
            gpus = resources["limits"].get("nvidia.com/gpu")
            assert (gpus is not None) == name.startswith("gpu"), f"{path.name} {name}"
            assert resources["requests"] == resources["limits"], f"{path.name} {name}: Ray reads limits"
