"""``deblurdiff serve`` as a user runs it: a real subprocess with its own local Ray, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from serve_testlib import decode, encode, free_port, photo

DEBLURDIFF = str(Path(sys.executable).parent / "deblurdiff")


def test_serve_rejects_a_directory_that_is_not_a_pipeline(cli, tmp_path):
    r = cli("serve", "--model", str(tmp_path), timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "model_index.json" in lines[0], r.stderr


def test_serve_rejects_inconsistent_replica_bounds(cli, tiny_model_dir):
    r = cli("serve", "--model", str(tiny_model_dir), "--min-replicas", "3", "--max-replicas", "1", timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--min-replicas" in r.stderr


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _lan_ip() -> str | None:
    """This machine's address on a non-loopback interface, if any."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


@pytest.mark.integration
def test_serve_runs_until_sigterm_and_leaves_no_ray_process(tiny_model_dir):
    # Without RAY_ADDRESS: `deblurdiff serve` starts (and must stop) its own local Ray instance.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    port = free_port()
    proc = subprocess.Popen(
        [DEBLURDIFF, "serve", "--model", str(tiny_model_dir), "--port", str(port), "--default-steps", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # keep the pipe drained
    reader.start()
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while not any("listening on" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "serve did not come up:\n" + "".join(lines[-30:])
            time.sleep(0.5)
        url = next(line for line in lines if "listening on" in line).split("listening on ")[1].split()[0]
        assert url == f"http://127.0.0.1:{port}/"

        rgb = photo("chelsea", 50, 30)
        r = requests.post(url + "v1/deblur", data=encode(rgb), timeout=180)
        assert r.status_code == 200 and r.headers["X-Deblur-Steps"] == "1", r.text
        assert decode(r.content).shape == rgb.shape
        # Bound to loopback only: not reachable on this machine's other address.
        lan = _lan_ip()
        if lan is not None:
            with pytest.raises(OSError), socket.create_connection((lan, port), timeout=5):
                pass

        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in _cmdline(c) for c in children), "expected its own local Ray"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(lines[-30:])
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [_cmdline(p)[:120] for p in alive]
        reader.join(timeout=10)
        assert "stopped" in lines[-1], lines[-5:]
        with socket.socket() as s:  # nobody listens on the port any more (TIME_WAIT leftovers are fine)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in children:
            try:
                child.kill()
            except psutil.Error:
                pass


@pytest.mark.integration
def test_serve_on_an_existing_cluster_removes_only_what_it_started(ray_cluster, tiny_model_dir):
    import ray

    def serve_controller_exists() -> bool:  # without caching a Serve client in this test process
        try:
            ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
            return True
        except ValueError:
            return False

    assert not serve_controller_exists()
    port = free_port()
    proc = subprocess.Popen(
        [DEBLURDIFF, "serve", "--model", str(tiny_model_dir), "--port", str(port), "--address", ray_cluster.address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("listening on" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "serve did not come up:\n" + "".join(lines[-30:])
            time.sleep(0.5)
        info = requests.get(f"http://127.0.0.1:{port}/v1/info", timeout=60).json()
        assert info["preset"] == "tiny"
        assert serve_controller_exists()  # deployed onto *this* cluster
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "".join(lines[-30:])
    finally:
        if proc.poll() is None:
            proc.kill()
    # The app (and the Serve instance it started) is gone; the cluster itself is untouched.
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert not serve_controller_exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)


@pytest.mark.integration
@pytest.mark.gpu
def test_serve_on_a_gpu_runs_the_cuda_eac_op(tiny_model_dir):
    # Own local Ray (it sees the GPU); one GPU per model replica; /v1/info names the CUDA EAC op.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    port = free_port()
    proc = subprocess.Popen(
        [DEBLURDIFF, "serve", "--model", str(tiny_model_dir), "--port", str(port), "--device", "cuda",
         "--default-steps", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while not any("listening on" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines[-30:])
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}/"
        info = requests.get(base + "v1/info", timeout=60).json()
        assert info["device"].startswith("cuda") and info["eac_backend"] == "cuda", info
        rgb = photo("astronaut", 130, 97)
        r = requests.post(base + "v1/deblur?tile=64", data=encode(rgb), timeout=300)
        assert r.status_code == 200, r.text
        assert decode(r.content).shape == rgb.shape
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
