"""infra/Dockerfile: a CUDA devel base, the package installed, the EAC CUDA op built for sm_80 + sm_90.

No Docker engine here, so the file is parsed and every piece that can be checked without one is:
the base image and toolkit, the build order, the arch list, the Python that the RUN lines execute
(the requirements extraction runs for real on this pyproject; the op build names a real function).
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys

import pytest

from _infra import DOCKERFILE, INFRA, REPO_ROOT, ray_manifests, cluster_spec


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def build_args() -> dict[str, str]:
    args = {}
    for word, rest in instructions():
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value.strip('"')
    return args


def env_vars() -> dict[str, str]:
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def python_snippets(run: str) -> list[str]:
    """The code of every `python -c "..."` in a RUN line."""
    snippets = []
    for part in run.split("&&"):
        argv = shlex.split(part)
        if argv and argv[0].startswith("python") and "-c" in argv:
            snippets.append(argv[argv.index("-c") + 1])
    return snippets


CUDA_DEVEL = re.compile(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?devel-ubuntu\d+\.\d+")


def test_base_is_a_cuda_devel_image_matching_the_torch_wheels():
    (word, base), *_ = [(w, r) for w, r in instructions() if w == "FROM"]
    image = base.replace("${CUDA_IMAGE}", build_args()["CUDA_IMAGE"])
    match = CUDA_DEVEL.fullmatch(image)
    assert match, f"{image}: expected an nvidia/cuda *devel* image (nvcc is needed to build the op)"
    cu = f"cu{match[1]}{match[2]}"
    assert build_args()["TORCH_INDEX_URL"].endswith("/" + cu), "torch wheels must match the toolkit's CUDA"
    assert env_vars()["CUDA_HOME"] == "/usr/local/cuda"


def test_versions_match_the_manifests():
    ray_version = build_args()["RAY_VERSION"]
    for path, doc in ray_manifests():
        assert cluster_spec(doc)["rayVersion"] == ray_version, path.name
    assert build_args()["TORCH_VERSION"], "pin torch"


def test_eac_cuda_op_is_built_at_image_build_time_for_sm80_and_sm90():
    steps = instructions()
    env_at = next(i for i, (w, r) in enumerate(steps) if w == "ENV" and "TORCH_CUDA_ARCH_LIST" in r)
    assert env_vars()["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0"
    # ENV (not a RUN-local variable): at run time the loader must compute the same flags and reuse
    # the library built here; it must also live in the image, not in a home directory.
    assert env_vars()["TORCH_EXTENSIONS_DIR"].startswith("/opt/")
    build_at, build_run = next((i, r) for i, (w, r) in enumerate(steps) if w == "RUN" and "deblurdiff.ops" in r)
    install_at = next(i for i, (w, r) in enumerate(steps) if w == "RUN" and re.search(r"pip install .*/app\b", r))
    assert install_at < build_at and env_at < build_at, "install the package and set the arch list first"
    (code,) = [c for c in python_snippets(build_run) if "deblurdiff.ops" in c]
    tree = ast.parse(code)
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names]
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert imported and all(name in called for _, name in imported), code
    for module, name in imported:
        # The ops helper's public build entry point: it must exist (and build CUDA without a visible GPU).
        entry = getattr(importlib.import_module(module), name, None)
        assert callable(entry), f"{module}.{name} (called by infra/Dockerfile) does not exist"


def test_requirements_step_reads_this_pyproject(tmp_path):
    """Run the Dockerfile's own requirements extraction on the repository's pyproject.toml."""
    (run,) = [r for w, r in instructions() if w == "RUN" and "tomllib" in r]
    (code,) = [c for c in python_snippets(run) if "tomllib" in c]
    code = code.replace("/tmp/requirements.txt", "requirements.txt")
    tmp = tmp_path
    (tmp / "pyproject.toml").write_bytes((REPO_ROOT / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", code], cwd=tmp, check=True, timeout=60)
    reqs = (tmp / "requirements.txt").read_text().splitlines()
    names = {re.split(r"[\[<>=~! ]", r, maxsplit=1)[0].lower() for r in reqs}
    assert {"torch", "ray", "deepspeed", "diffusers", "webdataset"} <= names
    assert "--no-build-isolation" in run, "DeepSpeed's setup.py imports torch"
    assert "ray[default" in run, "the head needs the dashboard/job server for RayJob and RayService"


def test_copies_and_context():
    for word, rest in instructions():
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert src == "." or (REPO_ROOT / src).exists(), f"COPY {src}: not in the repository"
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignore), "keep the venv and git history out of the build context"
    assert ("WORKDIR", "/app") in instructions()


@pytest.mark.parametrize("image", ["ubuntu:24.04", "nvidia/cuda:12.8.1-runtime-ubuntu24.04",
                                   "nvidia/cuda:12.8.1-base-ubuntu24.04"])
def test_base_image_check_rejects_images_without_nvcc(image):
    assert CUDA_DEVEL.fullmatch(image) is None
