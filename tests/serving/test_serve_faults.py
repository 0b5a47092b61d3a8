"""Serving under faults (issue 15): oversized uploads from clients that send the whole body before
reading, a slow sender, and the model replica SIGKILLed while clients are sending.

One app of the tiny pipeline on the session's two-node cluster, its own so that killing its replica
disturbs no other module.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import requests
from serve_testlib import encode, free_port, photo

pytestmark = [pytest.mark.faults, pytest.mark.integration]

APP = "faults"
STEPS = 2
REQUEST_TIMEOUT_S = 60.0  # the app's request_timeout_s: past it the ingress answers 504
DRAIN_TIMEOUT_S = 10.0  # Limits().drain_timeout_s (the default the app runs with)


@pytest.fixture(scope="module")
def base_url(ray_cluster, tiny_model_dir):
    from ray import serve

    from deblurdiff.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(build_app({"model": str(tiny_model_dir), "device": "cpu", "default_steps": STEPS,
                             "request_timeout_s": REQUEST_TIMEOUT_S}), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}/"
    finally:
        serve.shutdown()


def assert_json_error(status: int, content_type: str, body: bytes, expected_status: int, code: str) -> None:
    assert status == expected_status, body[:300]
    assert content_type == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"] and "\n" not in error["message"]


# ------------------------------------------------------------------------ oversized bodies: every client reads its 413
MB = 1_000_000


@pytest.mark.parametrize("size", [33 * MB, 200 * MB], ids=["33MB", "200MB"])
def test_requests_reads_the_413_of_an_oversized_body(base_url, size):
    r = requests.post(base_url + "v1/deblur", data=bytes(size), timeout=120,
                      headers={"Content-Type": "image/png"})
    assert_json_error(r.status_code, r.headers["content-type"], r.content, 413, "payload_too_large")
    assert str(size) in r.json()["error"]["message"]  # names what was sent and the limit


@pytest.mark.parametrize("size", [33 * MB, 200 * MB], ids=["33MB", "200MB"])
def test_urllib_reads_the_413_of_an_oversized_body(base_url, size):
    req = urllib.request.Request(base_url + "v1/deblur", data=bytes(size), method="POST",
                                 headers={"Content-Type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as info:  # not URLError / ConnectionResetError
        urllib.request.urlopen(req, timeout=120)
    err = info.value
    assert_json_error(err.code, err.headers["Content-Type"], err.read(), 413, "payload_too_large")


def test_chunked_oversized_body_is_answered_413(base_url):
    def chunks():  # no Content-Length: refused while streaming, the rest drained
        for _ in range(30):
            yield bytes(MB)
    r = requests.post(base_url + "v1/deblur", data=chunks(), timeout=120)
    assert_json_error(r.status_code, r.headers["content-type"], r.content, 413, "payload_too_large")


def test_a_slow_oversized_upload_is_cut_off_within_the_drain_bound(base_url):
    port = int(base_url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(2)
        s.sendall(b"POST /v1/deblur HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 33000000\r\n\r\n")
        start = time.monotonic()
        answer = b""
        # 1 kB every 50 ms (20 kB/s: the 33 MB would take half an hour); the server must stop waiting.
        while time.monotonic() - start < DRAIN_TIMEOUT_S + 30:
            try:
                s.sendall(bytes(1000))
            except OSError:  # the server hung up
                break
            try:
                data = s.recv(65536)
            except socket.timeout:
                data = None
            except OSError:
                break
            if data == b"":
                break
            if data:
                answer += data
                if b"payload_too_large" in answer:
                    break
            time.sleep(0.05)
        elapsed = time.monotonic() - start
    assert elapsed < DRAIN_TIMEOUT_S + 15, f"a slow upload held the server for {elapsed:.0f} s"
    assert elapsed >= DRAIN_TIMEOUT_S - 1  # it was drained, not refused outright
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# ------------------------------------------------------------------------ a short soak
def _serve_load():
    """benchmarks/serve_load.py as a module: the test runs the benchmark's own soak, shorter."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_soak_of_valid_and_hostile_requests_has_no_500_and_no_leak(base_url):
    serve_load = _serve_load()
    result = serve_load.soak(base_url, APP, seconds=36, concurrency=16, steps=STEPS, sample_every_s=1.0)
    serve_load.print_soak(result, 16)
    classes = result["classes"]
    assert result["server_errors"] == 0 and result["unexpected"] == 0, classes
    assert {c["expect"] for c in classes.values()} == {200, 400, 413, 415, 422}  # every class was sent
    assert all(sum(c["statuses"].values()) >= 1 for c in classes.values())
    for name, p in result["processes"].items():
        if "replica" in name:
            assert p["rss_growth"] < 0.10, (name, p)
        assert p["fds_after"] <= p["fds_before"] + 2, (name, p)  # +2: Ray may open a channel lazily


# ------------------------------------------------------------------------ replica death under load
def _model_replica_pid() -> int:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")], limit=1000)
    alive = [a for a in actors if a.class_name == f"ServeReplica:{APP}:DeblurModel"]
    assert len(alive) == 1, alive
    return alive[0].pid


def test_sigkilled_model_replica_under_load_answers_200_or_json_503_504_and_recovers(base_url):
    body = encode(photo("astronaut", 40, 32))
    url = f"{base_url}v1/deblur?steps={STEPS}&seed=1"
    warm = requests.post(url, data=body, timeout=REQUEST_TIMEOUT_S + 60)
    assert warm.status_code == 200, warm.text
    victim = _model_replica_pid()
    stop = time.monotonic() + 25  # clients keep sending for this long
    outcomes: list[tuple[int, str, float, bytes]] = []
    spans: list[tuple[float, float]] = []  # (sent, answered) per request, time.monotonic()

    def client() -> None:
        while time.monotonic() < stop:
            start = time.monotonic()
            try:
                r = requests.post(url, data=body, timeout=REQUEST_TIMEOUT_S + 30)
                outcomes.append((r.status_code, r.headers.get("content-type", ""), time.monotonic() - start,
                                 r.content))
            except requests.RequestException as exc:  # a reset or a hang: never acceptable
                outcomes.append((0, type(exc).__name__, time.monotonic() - start, b""))
            spans.append((start, time.monotonic()))

    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client) for _ in range(8)]
        time.sleep(4)  # requests in flight, some batched
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        for f in futures:
            f.result()
    assert outcomes
    for status, content_type, seconds, content in outcomes:
        assert status in (200, 503, 504), (status, content_type, content[:200])
        assert seconds < REQUEST_TIMEOUT_S + 30
        if status != 200:
            assert_json_error(status, content_type, content, status, json.loads(content)["error"]["code"])
    # The kill landed under load: requests were in flight across it. Whether any of them saw a 503/504
    # is Serve's choice (it may retry an in-flight request on the new replica), so it is not asserted.
    in_flight = sum(sent < killed_at < answered for sent, answered in spans)
    assert in_flight >= 1, "no request was in flight when the replica was killed"
    # Recovery: Serve replaces the replica and the same request succeeds again.
    deadline = time.monotonic() + 180
    while True:
        r = requests.post(url, data=body, timeout=REQUEST_TIMEOUT_S + 30)
        if r.status_code == 200:
            break
        assert r.status_code in (503, 504) and time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(1)
    assert _model_replica_pid() != victim
