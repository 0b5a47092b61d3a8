"""Shared test fixtures.

- ``device`` / ``dtype``: parametrisation helpers so the same tests run on CPU here and on CUDA on a
  lent GPU (``gpu``-marked cases are skipped where CUDA is absent).
- ``ray_cluster``: ONE real two-node local Ray cluster for the whole session (``ray start --head`` plus
  a second ``ray start --address`` on this machine, each with its own resources). Ray's start costs
  tens of seconds on 2 cores, so every test shares it. It sets ``RAY_ADDRESS`` so CLI subprocesses
  join it too.
- Tiers: whole-stack tests (cluster, Serve, browser, DeepSpeed runs) carry ``@pytest.mark.integration``;
  ``pytest -m "not integration"`` is the fast tier. Using ``ray_cluster`` without the marker fails collection.
- ``tiny_model_dir`` / ``tiny_pipe``: the one shared tiny model (saved once per session, and loaded).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray 2.60 turns on token auth for a head when ~/.ray/auth_token exists (any earlier local
# ray.init() writes one), but `ray start --address` on the second node does not pick the mode up.
# The test cluster is loopback-only, so one explicit mode for every process of the session.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    # The fast tier (`pytest -m "not integration"`) must never start the cluster: a test that uses it
    # without the marker is a collection error, not a slow surprise.
    unmarked = [item.nodeid for item in items
                if "ray_cluster" in getattr(item, "fixturenames", ()) and "integration" not in item.keywords]
    if unmarked:
        raise pytest.UsageError("these tests use the ray_cluster fixture; mark them @pytest.mark.integration: "
                                + ", ".join(unmarked))
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run on a lent GPU)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------- device / dtype parametrisation
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request):
    import torch

    return torch.device(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    import torch

    return getattr(torch, request.param)


# ---------------------------------------------------------------- Ray
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    address: str  # GCS address, for ray.init(address=...) and RAY_ADDRESS
    dashboard_url: str  # for `ray job submit --address`
    head_cpus: int
    worker_cpus: int


def _ray_cmd() -> str:
    found = VENV_BIN / "ray"
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


def _start_node(args: list[str]) -> None:
    # The venv's bin first on the nodes' PATH, so jobs submitted to them find `deblurdiff`.
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run([_ray_cmd(), "start", *args, "--disable-usage-stats"],
                            capture_output=True, text=True, timeout=300, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node local cluster: head (2 CPUs) + worker node (2 CPUs, resource ``node2``)."""
    gcs_port, dash_port = free_port(), free_port()
    address = f"127.0.0.1:{gcs_port}"
    ports = lambda: ["--min-worker-port", "0", "--max-worker-port", "0",  # noqa: E731
                     "--dashboard-agent-listen-port", str(free_port()),
                     "--metrics-export-port", str(free_port())]
    try:
        # Inside the try: a head that fails half-way (GCS up, raylet timed out) is stopped too.
        _start_node(["--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                     "--ray-client-server-port", str(free_port()),
                     "--num-cpus", "2", "--num-gpus", "0", "--resources", '{"head": 1}', *ports()])
        _start_node(["--address", address, "--node-ip-address", "127.0.0.1",
                     "--num-cpus", "2", "--num-gpus", "0", "--resources", '{"node2": 1}', *ports()])
        import ray

        ray.init(address=address, logging_level="WARNING")
        deadline = time.time() + 120
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.time() < deadline:
            time.sleep(1)
        old = os.environ.get("RAY_ADDRESS")
        os.environ["RAY_ADDRESS"] = address
        yield RayCluster(address, f"http://127.0.0.1:{dash_port}", 2, 2)
        if old is None:
            os.environ.pop("RAY_ADDRESS", None)
        ray.shutdown()
    finally:
        # Stop only this session's nodes: `ray stop` would kill other sessions' clusters too.
        _stop_cluster(gcs_port)


def _stop_cluster(gcs_port: int) -> None:
    import psutil

    # Every process of this cluster (GCS, raylets, workers, dashboard) names the GCS port.
    # (Ray may advertise the machine's IP rather than 127.0.0.1, so match on the port alone.)
    pattern = re.compile(rf"(gcs[-_]address[= ]\S*:{gcs_port}\b|--gcs_server_port[= ]{gcs_port}\b"
                         rf"|--port[= ]{gcs_port}\b|--address[= ]\S*:{gcs_port}\b)")
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if proc.pid != os.getpid() and "ray" in cmd and pattern.search(cmd):
            victims.append(proc)
    # Their children too: the raylet's agents retitle themselves (`ray::DashboardAgent`, no port on their
    # command line) and outlived their raylet, idle, after every test session.
    for proc in list(victims):
        try:
            victims += proc.children(recursive=True)
        except psutil.Error:
            pass
    victims = list({proc.pid: proc for proc in victims}.values())
    for proc in victims:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    return ray_cluster.address


# ---------------------------------------------------------------- the tiny model (shared)
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """THE shared tiny model: the embedded default (tiny preset, seed 0) saved once per session, as a
    trained model would be. Serving, deblur, eval and the training parts all start from it."""
    from deblurdiff import DeblurDiffPipeline

    path = tmp_path_factory.mktemp("tiny-model") / "tiny-pipeline"
    DeblurDiffPipeline.from_preset("tiny").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """``tiny_model_dir`` loaded once per session. Shared: read it, never change its weights."""
    from deblurdiff import DeblurDiffPipeline

    pipe = DeblurDiffPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- CLI
def run_cli(*args: str, env: dict | None = None, timeout: float = 900, cwd: str | Path | None = None):
    """Run the real ``deblurdiff`` console script; returns the CompletedProcess (text)."""
    exe = VENV_BIN / "deblurdiff"
    cmd = [str(exe) if exe.exists() else "deblurdiff", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


@pytest.fixture
def cli():
    return run_cli
