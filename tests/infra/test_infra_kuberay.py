"""The KubeRay manifests in infra/kuberay, strictly against the ray.io/v1 CRDs of ../shared/kuberay-crds."""

from __future__ import annotations

import pytest

from _infra import (CRD_DIR, CRD_FILES, RAY_KINDS, all_groups, cluster_spec, container, manifests,
                    metadata_problems, ray_manifests, schema_errors)

needs_crds = pytest.mark.skipif(
    not all((CRD_DIR / f).is_file() for f in CRD_FILES.values()),
    reason=f"KubeRay CRDs not found in {CRD_DIR} (the shared folder beside the repository); "
           "schema validation needs ray.io_rayclusters.yaml, ray.io_rayjobs.yaml, ray.io_rayservices.yaml",
)


def _ids(items):
    return [f"{path.name}:{doc.get('kind')}" for path, doc in items]


RAY_DOCS = ray_manifests()


def test_the_expected_resources_exist():
    kinds = sorted(doc["kind"] for _, doc in RAY_DOCS)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayService"]
    assert all(doc["apiVersion"] == "ray.io/v1" for _, doc in RAY_DOCS)
    other = [(p.name, d.get("kind")) for p, d in manifests() if d.get("apiVersion") != "ray.io/v1"]
    assert other == [("pvc.yaml", "PersistentVolumeClaim")]


@needs_crds
@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=_ids(RAY_DOCS))
def test_manifest_matches_the_crd_schema_strictly(path, doc):
    assert schema_errors(doc) == []


@needs_crds
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
