"""Bounded HTTP load on the deblurdiff Serve app over loopback: batching on vs off.

    .venv/bin/python benchmarks/serve_load.py                       # tiny preset, CPU, local Ray
    .venv/bin/python benchmarks/serve_load.py --model DIR --device cuda --size 512 --steps 20   # GPU

For each mode (dynamic batching on: max_batch_size=8; off: max_batch_size=1) and each concurrency
(1, 4, 16) it sends a fixed number of POST /v1/deblur requests from that many closed-loop clients and
prints requests/s, p50/p99 latency, errors and the mean batch size the server reported. Targets (issue
8): 0 errors; batching >= 1.5x the throughput of no batching at concurrency 16.

The app is deployed once; the mode switch is a live ``user_config`` change (no replica restart).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="pipeline dir (default: the tiny preset, saved to a temp dir)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--address", default=None, help="existing Ray cluster (default: a new local instance)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default: max(8, 2 x concurrency))")
    p.add_argument("--size", type=int, nargs=2, default=[64, 48], metavar=("W", "H"), help="image size")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=8, help="batch size of the 'on' mode")
    p.add_argument("--num-cpus", type=float, default=2.0, help="CPUs reserved by the model replica")
    p.add_argument("--port", type=int, default=None)
    return p.parse_args(argv)


def post(url: str, body: bytes, timeout: float = 600.0) -> tuple[int, float, int]:
    """(status, seconds, server batch size) for one request; status 0 on a connection error."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, time.perf_counter() - start, int(r.headers.get("X-Deblur-Batch-Size", 0))
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - start, 0
    except (urllib.error.URLError, OSError):
        return 0, time.perf_counter() - start, 0


def run_level(url: str, body: bytes, concurrency: int, total: int) -> dict:
    """``total`` requests from ``concurrency`` closed-loop clients (each sends the next when one returns)."""
    results: list[tuple[int, float, int]] = []
    lock = threading.Lock()
    sent = [0]

    def client():
        while True:
            with lock:
                if sent[0] >= total:
                    return
                sent[0] += 1
            outcome = post(url, body)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - start
    ok = sorted(s for status, s, _ in results if status == 200)
    batches = [b for status, _, b in results if status == 200]

    def pct(q):
        return ok[min(len(ok) - 1, int(round(q * (len(ok) - 1))))] if ok else float("nan")

    return {"concurrency": concurrency, "requests": total, "rps": len(ok) / wall, "p50": pct(0.5),
            "p99": pct(0.99), "errors": len(results) - len(ok),
            "batch": statistics.fmean(batches) if batches else 0.0, "wall": wall}


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import ray
    from PIL import Image
    from ray import serve
    from skimage import data

    from deblurdiff.serving.app import build_app

    model = args.model
    if model is None:
        from deblurdiff import DeblurDiffPipeline

        model = tempfile.mkdtemp(prefix="deblurdiff-tiny-")
        DeblurDiffPipeline.from_preset("tiny").save_pretrained(model)

    from deblurdiff._ray import connect

    if args.address:
        connect(args.address)
    else:
        connect("local", include_dashboard=False)
    port = args.port
    if port is None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    # A real photo (astronaut), resized; the same body for every request.
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize(tuple(args.size), Image.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    body = buf.getvalue()
    url = f"http://127.0.0.1:{port}/v1/deblur?steps={args.steps}&seed=0"

    base = {"model": model, "device": args.device, "num_cpus": args.num_cpus, "max_ongoing_requests": 32,
            "max_queued_requests": 256, "batch_wait_timeout_s": 0.05}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    rows = []
    try:
        for mode, batch in (("on", args.max_batch_size), ("off", 1)):
            # Same app, same replica: only the model's user_config changes (applied live).
            serve.run(build_app({**base, "max_batch_size": batch}), name="bench", route_prefix="/")
            for _ in range(2):  # warm-up (first-call allocations, routers)
                post(url, body)
            for c in args.concurrency:
                total = args.requests or max(8, 2 * c)
                row = run_level(url, body, c, total)
                row["mode"] = mode
                rows.append(row)
                print(f"batching {mode:3s} c={c:<3d} {row['rps']:.2f} req/s  p50 {row['p50']:.2f}s  "
                      f"p99 {row['p99']:.2f}s  errors {row['errors']}  mean batch {row['batch']:.1f}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    info = f"{args.size[0]}x{args.size[1]} px, {args.steps} steps, device {args.device}"
    print(f"\n## serve_load ({info}; model {model})\n")
    print("| batching | concurrency | requests | req/s | p50 s | p99 s | errors | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.2f} | "
              f"{r['p99']:.2f} | {r['errors']} | {r['batch']:.1f} |")
    top = max(args.concurrency)
    on = next(r for r in rows if r["mode"] == "on" and r["concurrency"] == top)
    off = next(r for r in rows if r["mode"] == "off" and r["concurrency"] == top)
    speedup = on["rps"] / off["rps"] if off["rps"] else float("nan")
    errors = sum(r["errors"] for r in rows)
    print(f"\nbatching speed-up at concurrency {top}: {speedup:.2f}x (target >= 1.5x); errors: {errors} (target 0)")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
