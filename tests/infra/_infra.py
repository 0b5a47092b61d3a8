"""Shared helpers for the infra tests: load the manifests, make the KubeRay CRD schemas strict.

Module name starts with ``_infra`` (not ``conftest``/``helpers``) because tests/ has no packages:
pytest puts this directory on ``sys.path`` and plain names would clash with other test folders.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
KUBERAY = INFRA / "kuberay"
LAUNCHER = INFRA / "ray-cluster-aws.yaml"
DOCKERFILE = INFRA / "Dockerfile"
README = INFRA / "README.md"
# KubeRay's CRDs, vendored (see the README there), so the schema tests run on a plain clone.
CRD_DIR = Path(__file__).resolve().parent / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
RAY_KINDS = tuple(CRD_FILES)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 3 MB


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_Loader) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


def manifests() -> list[tuple[Path, dict]]:
    """Every document of every file in infra/kuberay, with the file it came from."""
    return [(path, doc) for path in manifest_files() for doc in load_yaml_docs(path)]


def ray_manifests(kind: str | None = None) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in manifests()
            if d.get("apiVersion") == "ray.io/v1" and (kind is None or d.get("kind") == kind)]


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec a manifest creates (RayCluster itself, RayJob, RayService)."""
    kind, spec = doc["kind"], doc["spec"]
    if kind == "RayCluster":
        return spec
    if kind == "RayJob":
        return spec["rayClusterSpec"]
    if kind == "RayService":
        return spec["rayClusterConfig"]
    raise ValueError(f"not a Ray manifest: {kind}")


def all_groups(doc: dict) -> dict[str, dict]:
    """{"head": headGroupSpec, groupName: workerGroupSpec, ...} of the cluster a manifest creates."""
    spec = cluster_spec(doc)
    groups = {"head": spec["headGroupSpec"]}
    for group in spec.get("workerGroupSpecs", []):
        groups[group["groupName"]] = group
    return groups


def container(group: dict) -> dict:
    (ray_container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
    return ray_container


# ----------------------------------------------------------------------------- strict CRD schemas
def make_strict(schema: dict) -> dict:
    """A copy of an openAPIV3Schema where every object with ``properties`` rejects unknown keys.

    Kubernetes prunes unknown fields silently (or rejects them with ``kubectl --validate=strict``);
    the CRDs do not say ``additionalProperties: false``, so plain jsonschema would accept typos.
    Objects marked ``x-kubernetes-preserve-unknown-fields`` keep accepting anything.
    """
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and not node.get("x-kubernetes-preserve-unknown-fields")
                    and "additionalProperties" not in node):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def crd_schema(kind: str, version: str = "v1") -> dict:
    crd = load_yaml_docs(CRD_DIR / CRD_FILES[kind])[0]
    assert crd["spec"]["names"]["kind"] == kind, f"{CRD_FILES[kind]} defines {crd['spec']['names']['kind']}"
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert found["served"] and found["storage"], f"{kind} {version} is not the served storage version"
    return make_strict(found["schema"]["openAPIV3Schema"])


def crd_validator(kind: str):
    import jsonschema

    schema = crd_schema(kind)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def schema_errors(doc: dict) -> list[str]:
    """Every way ``doc`` breaks its strict CRD schema, as 'path: message' lines."""
    errors = crd_validator(doc["kind"]).iter_errors(doc)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}" for e in errors)


# ----------------------------------------------------------------------------- metadata
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
OBJECT_META_KEYS = {"name", "generateName", "namespace", "labels", "annotations"}


def metadata_problems(meta: dict, *, needs_name: bool = True) -> list[str]:
    """What is wrong with an ObjectMeta a user writes (the CRD leaves it as a free object)."""
    problems = [f"unknown metadata key {k!r}" for k in set(meta) - OBJECT_META_KEYS]
    name = meta.get("name")
    if needs_name and not name:
        problems.append("metadata.name is missing")
    # KubeRay derives Service and Pod names from it: a DNS-1035 label, short enough for suffixes.
    if name is not None and (not isinstance(name, str) or not DNS1035_LABEL.match(name) or len(name) > 40):
        problems.append(f"metadata.name {name!r} is not a DNS-1035 label of at most 40 characters")
    for key, value in (meta.get("labels") or {}).items():
        if not LABEL_KEY.match(key) or len(key.split("/")[-1]) > 63:
            problems.append(f"label key {key!r} is not a qualified name")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"label {key}={value!r} is not a valid label value")
    for key, value in (meta.get("annotations") or {}).items():
        if not isinstance(value, str):
            problems.append(f"annotation {key} must be a string, got {type(value).__name__}")
    return problems


# ----------------------------------------------------------------------------- entrypoints
def split_command(entrypoint: str) -> list[str]:
    """argv of a RayJob entrypoint (a shell line): one command, no pipes or chaining."""
    argv = shlex.split(entrypoint, comments=True)
    assert not {"&&", "||", ";", "|"} & set(argv), f"entrypoint is more than one command: {entrypoint!r}"
    return argv
