"""The HTTP API (DESIGN §4) over real HTTP on loopback, and the web page in a real browser.

One deployment of the tiny pipeline is shared by the whole module (on the session's two-node Ray
cluster), next to a "strict" app with tiny limits so 413 / 503 / 504 are reached cheaply.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_testlib import decode, encode, free_port, photo

pytestmark = pytest.mark.integration  # whole stack: Ray Serve on the two-node cluster, HTTP, a browser

STEPS = 2  # few steps keep the module fast; the code path is the same as for 50
TIMEOUT = 180  # seconds per HTTP call (2 shared cores)


@dataclass
class Server:
    url: str  # the app with default limits
    strict: str  # 200 kB bodies, 100 x 100 pixels, 0.5 s budget, one request in flight + one queued


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_model_dir):
    from ray import serve

    from deblurdiff.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(build_app({"model": str(tiny_model_dir), "device": "cpu", "default_steps": STEPS}),
                  name="deblurdiff", route_prefix="/")
        serve.run(build_app({
            "model": str(tiny_model_dir), "device": "cpu", "num_cpus": 0.25,
            "max_ongoing_requests": 1, "max_queued_requests": 1,
            # A lone request waits up to 30 s for batch mates, so its 0.5 s budget always runs out
            # first: 504 without any computing, and the replica stays busy for the 503 test.
            "batch_wait_timeout_s": 30.0, "request_timeout_s": 0.5,
            "max_body_bytes": 200_000, "max_pixels": 100 * 100,
        }), name="strict", route_prefix="/strict")
        yield Server(f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/strict/")
    finally:
        serve.shutdown()


def deblur(base: str, body=None, query: str = f"steps={STEPS}", **kwargs) -> requests.Response:
    return requests.post(f"{base}v1/deblur?{query}", data=body, timeout=TIMEOUT, **kwargs)


def assert_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"code", "message"} and error["message"] and "\n" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------ happy paths
def test_health_info_and_page(server):
    assert requests.get(server.url + "healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    info = requests.get(server.url + "v1/info", timeout=TIMEOUT).json()
    from deblurdiff import __version__
    from deblurdiff.ops import eac_backend

    assert info["model"] == str(Path(info["model"]))  # the directory it loaded
    assert (info["preset"], info["device"], info["version"]) == ("tiny", "cpu", __version__)
    assert info["eac_backend"] == eac_backend("cpu")
    assert "ddpm" in info["samplers"] and info["limits"]["default_steps"] == STEPS
    assert info["kernel_size"] == 5
    # No settings recorded with this model: requests without parameters run the released sampler.
    assert info["default_sampling"] == {"sampler": "ddpm", "steps": 50, "strength": 1.0}
    page = requests.get(server.url, timeout=TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN


@pytest.mark.parametrize("fmt, width, height", [("PNG", 45, 37), ("JPEG", 70, 50), ("WEBP", 33, 61)])
def test_every_input_format_gives_an_image_of_the_input_size(server, fmt, width, height):
    body = encode(photo("astronaut", width, height), fmt)
    r = deblur(server.url, body, f"steps={STEPS}&seed=3", headers={"Content-Type": f"image/{fmt.lower()}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["X-Deblur-Seed"] == "3"
    out, sent = decode(r.content), decode(body)
    assert out.shape == (height, width, 3)
    # A restoration of *this* photo: AdaIN gives the output the input's per-channel mean.
    assert np.abs(out.mean((0, 1)) - sent.mean((0, 1))).max() < 8


@pytest.mark.parametrize("out_fmt", ["jpeg", "webp"])
def test_multipart_upload_and_output_format(server, out_fmt):
    rgb = photo("coffee", 52, 41)
    r = requests.post(f"{server.url}v1/deblur?steps={STEPS}&format={out_fmt}", timeout=TIMEOUT,
                      files={"image": ("coffee.png", encode(rgb), "image/png")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{out_fmt}"
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(r.content)).format == out_fmt.upper()
    assert decode(r.content).shape == rgb.shape


def test_tiled_inference_keeps_the_size(server):
    rgb = photo("chelsea", 150, 90)  # larger than the 64 px tile in both directions
    r = deblur(server.url, encode(rgb), "steps=1&tile=64")
    assert r.status_code == 200, r.text
    assert r.headers["X-Deblur-Tile"] == "64"
    assert decode(r.content).shape == rgb.shape


def test_kernel_map_has_the_input_size_and_reports_the_spread(server):
    rgb = photo("coffee", 45, 33)
    r = requests.post(f"{server.url}v1/kernel-map?steps={STEPS}&seed=5", data=encode(rgb), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert decode(r.content).shape == rgb.shape
    mean, top, scale = (float(r.headers[f"X-Deblur-Kernel-Spread-{k}"]) for k in ("Mean", "Max", "Scale"))
    assert 0 <= mean <= top <= scale == pytest.approx(2 * 2**0.5, abs=1e-3)  # k = 5: p·√2
    assert_error(requests.post(f"{server.url}v1/kernel-map?steps=0", data=encode(rgb), timeout=TIMEOUT), 422)


def test_concurrent_requests_are_batched_and_never_mixed_up(server):
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    bodies = [encode(photo(name, 48, 40)) for name in names]

    def post(i: int) -> requests.Response:
        return deblur(server.url, bodies[i], f"steps={STEPS}&seed={100 + i}")

    alone = [post(i) for i in range(len(bodies))]  # one after another: batches of one
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(post, range(len(bodies))))
    assert all(r.status_code == 200 for r in alone + together), [r.text for r in alone + together]
    assert all(r.headers["X-Deblur-Batch-Size"] == "1" for r in alone)
    assert max(int(r.headers["X-Deblur-Batch-Size"]) for r in together) > 1, "nothing was batched"
    ref = [decode(r.content).astype(np.int16) for r in alone]
    got = [decode(r.content).astype(np.int16) for r in together]
    for i in range(len(bodies)):
        # Each request gets the result of its own image and seed, whatever its batch mates...
        assert np.abs(got[i] - ref[i]).max() <= 2, f"request {i} differs from its batch-of-one result"
        # ...and nobody else's.
        for j in range(len(bodies)):
            if j != i:
                assert np.abs(got[i] - ref[j]).mean() > 10, f"request {i} got request {j}'s image"


# ------------------------------------------------------------------------------------ errors
def _truncated_png() -> bytes:
    data = encode(photo("rocket", 64, 48))
    return data[: len(data) // 2]


ERROR_CASES = [
    ("garbage", dict(body=b"this is not an image at all"), 400, "invalid_image"),
    ("empty", dict(body=b""), 400, "invalid_image"),
    ("truncated", dict(body=_truncated_png()), 400, "invalid_image"),
    ("gif", dict(body=encode(photo("coffee", 20, 20), "GIF")), 415, "unsupported_media_type"),
    ("bmp", dict(body=encode(photo("coffee", 20, 20), "BMP")), 415, "unsupported_media_type"),
    ("text-content-type", dict(body=encode(photo("coffee", 20, 20)), headers={"Content-Type": "text/plain"}),
     415, "unsupported_media_type"),
    ("pixel-bomb", dict(body=png_header_only(5000, 5000)), 413, "too_many_pixels"),
    ("giant-bomb", dict(body=png_header_only(60000, 60000)), 413, "too_many_pixels"),
    ("steps-zero", dict(body=encode(photo("coffee", 20, 20)), query="steps=0"), 422, "invalid_parameter"),
    ("steps-too-many", dict(body=encode(photo("coffee", 20, 20)), query="steps=201"), 422, "invalid_parameter"),
    ("sampler", dict(body=encode(photo("coffee", 20, 20)), query="sampler=nope"), 422, "invalid_parameter"),
    ("seed", dict(body=encode(photo("coffee", 20, 20)), query="seed=-4"), 422, "invalid_parameter"),
    ("tile", dict(body=encode(photo("coffee", 20, 20)), query="tile=100"), 422, "invalid_parameter"),
    ("format", dict(body=encode(photo("coffee", 20, 20)), query="format=bmp"), 422, "invalid_parameter"),
]


@pytest.mark.parametrize("case, kwargs, status, code", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_each_bad_request_gets_its_json_error(server, case, kwargs, status, code):
    kwargs = dict(kwargs)
    r = deblur(server.url, kwargs.pop("body"), kwargs.pop("query", f"steps={STEPS}"), **kwargs)
    assert_error(r, status, code)


def test_multipart_without_an_image_field_is_422(server):
    r = requests.post(server.url + "v1/deblur", files={"file": ("x.png", encode(photo("coffee", 20, 20)))},
                      timeout=TIMEOUT)
    assert "image" in assert_error(r, 422, "missing_field")["message"]


def test_body_size_is_refused_from_the_header_before_the_body_is_sent(server):
    # Announce 300 MB (limit 20 MiB, beyond max_drain_bytes) and send nothing: answered without reading a body.
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/")))) as s:
        s.settimeout(60)
        s.sendall(b"POST /v1/deblur HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 300000000\r\n\r\n")
        head = s.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert "payload_too_large" in head or "application/json" in head


def test_strict_limits_bytes_with_and_without_content_length(server):
    blob = bytes(300_000)
    assert_error(deblur(server.strict, blob), 413, "payload_too_large")

    def chunked():  # no Content-Length: the server counts while streaming
        for start in range(0, len(blob), 25_000):
            yield blob[start:start + 25_000]
    assert_error(deblur(server.strict, chunked()), 413, "payload_too_large")


def test_strict_limits_pixels(server):
    error = assert_error(deblur(server.strict, encode(photo("rocket", 101, 100))), 413, "too_many_pixels")
    assert "max_pixels" in error["message"]


def test_timeout_is_504(server):
    r = deblur(server.strict, encode(photo("rocket", 40, 30)))
    assert "request_timeout_s" in assert_error(r, 504, "timeout")["message"]
    assert r.elapsed.total_seconds() < 30  # the budget (0.5 s), not the 30 s batch wait


def test_overload_is_503_at_once(server):
    body = encode(photo("rocket", 40, 30))
    with cf.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: deblur(server.strict, body), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {503, 504} and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503, "overloaded")
            assert r.headers["Retry-After"] == "1"
            assert r.elapsed.total_seconds() < 30


# ------------------------------------------------------------------------------------ robustness
def test_hostile_input_never_takes_a_replica_down(server):
    from ray import serve

    small = photo("astronaut", 20, 20)
    before = deblur(server.url, encode(small))
    assert before.status_code == 200, before.text
    gray16 = encode((np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 163), "PNG")
    odd_but_valid = [encode(small[:1, :1]), encode(np.dstack([small, small[..., :1]]), "PNG"), gray16]
    hostile = [b"\x00" * 1000, b"\x89PNG\r\n\x1a\n" + b"\xff" * 500, png_header_only(60000, 60000),
               _truncated_png(), encode(small, "JPEG")[:200], b"RIFF\x10\x00\x00\x00WEBPVP8 garbage"]
    for body in hostile:
        r = deblur(server.url, body)
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    for body in odd_but_valid:  # 1x1, RGBA, 16-bit grayscale: decoded to RGB and served
        r = deblur(server.url, body)
        assert r.status_code == 200, r.text
        assert decode(r.content).shape[:2] == decode(body).shape[:2]
    after = deblur(server.url, encode(small))
    assert after.status_code == 200
    assert after.headers["X-Deblur-Replica"] == before.headers["X-Deblur-Replica"]  # never restarted
    assert requests.get(server.url + "healthz", timeout=TIMEOUT).json() == {"status": "ok"}
    app = serve.status().applications["deblurdiff"]
    assert app.status == "RUNNING"
    for deployment in app.deployments.values():
        states = {getattr(k, "value", k): n for k, n in deployment.replica_states.items()}
        assert deployment.status == "HEALTHY" and states == {"RUNNING": 1}


# ------------------------------------------------------------------------------------ web page
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_web_page_uploads_a_photo_and_shows_the_result(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    photo_path = tmp_path / "astronaut.jpg"
    photo_path.write_bytes(encode(photo("astronaut", 72, 56), "JPEG", quality=90))
    requested: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda req: requested.append(req.url))
            page.goto(server.url)
            page.wait_for_function("document.getElementById('sampler').options.length > 0", timeout=60_000)
            page.set_input_files("#file", str(photo_path))
            page.check("#want-kmap")
            page.click("#run")
            page.wait_for_function(
                "() => { const r = document.getElementById('result');"
                " return r.src.startsWith('blob:') && r.complete && r.naturalWidth > 0; }",
                timeout=TIMEOUT * 1000)
            size = page.evaluate("[document.getElementById('result').naturalWidth,"
                                 " document.getElementById('result').naturalHeight]")
            assert size == [72, 56]
            assert "done" in page.text_content("#status")
            assert page.get_attribute("#download", "href").startswith("blob:")
            assert page.is_visible("#download")
            # The optional kernel-spread map follows the result.
            page.wait_for_function(
                "() => { const k = document.getElementById('kmap');"
                " return k.src.startsWith('blob:') && k.complete && k.naturalWidth > 0; }",
                timeout=TIMEOUT * 1000)
            assert page.is_visible("#kmap")
            assert page.evaluate("document.getElementById('kmap').naturalWidth") == 72
        finally:
            browser.close()
    # Self-contained: every request went to this server (or was a local blob).
    assert all(u.startswith(server.url) or u.startswith("blob:") for u in requested), requested


def test_strength_query_parameter(server):
    body = encode(photo("astronaut", 24, 20), "PNG")
    r = deblur(server.url, body, "steps=4&strength=0.5&sampler=dpmpp&seed=0", headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert (r.headers["X-Deblur-Steps"], r.headers["X-Deblur-Strength"], r.headers["X-Deblur-Sampler"]) == \
        ("4", "0.5", "dpmpp")
    for bad in ("-0.5", "1.5", "much"):
        error = assert_error(deblur(server.url, body, f"strength={bad}"), 422, "invalid_parameter")
        assert error["message"].startswith("strength:")
