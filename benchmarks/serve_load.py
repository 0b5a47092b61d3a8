"""Bounded HTTP load on the deblurdiff Serve app over loopback: batching on vs off.

    .venv/bin/python benchmarks/serve_load.py                       # tiny preset, CPU, local Ray
    .venv/bin/python benchmarks/serve_load.py --preset sd21 --device cuda --size 512 512 --steps 20 \
        --num-cpus 4                                                 # one GPU (sd21, random weights)

For each mode (dynamic batching on: max_batch_size=8; off: max_batch_size=1) and each concurrency
(1, 4, 16) it sends a fixed number of POST /v1/deblur requests from that many closed-loop clients and
prints requests/s, p50/p99 latency, errors and the mean batch size the server reported. Targets (issue
8): 0 errors; batching >= 1.5x the throughput of no batching at concurrency 16.

Both modes run side by side as two apps (/on, /off; one model replica each, same arguments but
max_batch_size) and are measured in alternating rounds, so drifting machine load hits both alike.
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
    p.add_argument("--model", default=None, help="pipeline dir (default: --preset with random weights, saved "
                                                 "to a temp dir; timing is the same as with trained weights)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "sd21"], help="used when --model is not given")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--address", default=None, help="existing Ray cluster (default: a new local instance)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default: max(8, 2 x concurrency))")
    p.add_argument("--size", type=int, nargs=2, default=[64, 48], metavar=("W", "H"), help="image size")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=16,
                   help="max_batch_size of the 'on' mode (the app's own default is 8)")
    p.add_argument("--num-cpus", type=float, default=1.0,
                   help="CPUs reserved by the model replica (= its torch threads; 1 avoids spin contention on 2 cores)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode and level (median shown)")
    return p.parse_args(argv)


def post(url: str, body: bytes, timeout: float = 600.0) -> tuple[int, float, int, float]:
    """(status, seconds, server batch size, server seconds per image) for one request; status 0 on a
    connection error."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            batch = int(r.headers.get("X-Deblur-Batch-Size", 0))
            per_image = float(r.headers.get("X-Deblur-Inference-Seconds", "nan")) / max(batch, 1)
            return r.status, time.perf_counter() - start, batch, per_image
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - start, 0, float("nan")
    except (urllib.error.URLError, OSError):
        return 0, time.perf_counter() - start, 0, float("nan")


def run_level(url: str, body: bytes, concurrency: int, total: int) -> dict:
    """``total`` requests from ``concurrency`` closed-loop clients (each sends the next when one returns)."""
    results: list[tuple[int, float, int, float]] = []
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
    ok = sorted(r[1] for r in results if r[0] == 200)
    batches = [r[2] for r in results if r[0] == 200]
    per_image = [r[3] for r in results if r[0] == 200]

    def pct(q):
        return ok[min(len(ok) - 1, int(round(q * (len(ok) - 1))))] if ok else float("nan")

    return {"concurrency": concurrency, "requests": total, "rps": len(ok) / wall, "p50": pct(0.5),
            "p99": pct(0.99), "errors": len(results) - len(ok),
            "batch": statistics.fmean(batches) if batches else 0.0, "wall": wall,
            "per_image": statistics.fmean(per_image) if per_image else float("nan")}


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

        model = tempfile.mkdtemp(prefix=f"deblurdiff-{args.preset}-")
        DeblurDiffPipeline.from_preset(args.preset, random_init=True).save_pretrained(model)

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

    def url(mode: str) -> str:
        return f"http://127.0.0.1:{port}/{mode}/v1/deblur?steps={args.steps}&seed=0"

    base = {"model": model, "device": args.device, "num_cpus": args.num_cpus, "max_ongoing_requests": 32,
            "max_queued_requests": 256, "batch_wait_timeout_s": 0.05}
    if args.device == "cuda":
        base["num_gpus"] = 0.5  # both apps' replicas share one GPU; only one is loaded at a time
    modes = {"on": args.max_batch_size, "off": 1}
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    rows = []
    try:
        # Both modes side by side (one replica each, same arguments but max_batch_size), measured in
        # alternation so a change in machine load hits both alike.
        for mode, batch in modes.items():
            serve.run(build_app({**base, "max_batch_size": batch}), name=f"batching-{mode}", route_prefix=f"/{mode}")
            for _ in range(2):  # warm-up (first-call allocations, routers)
                post(url(mode), body)
        for c in args.concurrency:
            total = args.requests or max(8, 2 * c)
            runs = {mode: [] for mode in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    runs[mode].append(run_level(url(mode), body, c, total))
            for mode in modes:
                # The median round (rounds alternate between modes; the machine may be shared).
                row = sorted(runs[mode], key=lambda r: r["rps"])[(len(runs[mode]) - 1) // 2]
                row.update(mode=mode, rounds=[round(r["rps"], 2) for r in runs[mode]])
                rows.append(row)
                print(f"batching {mode:3s} c={c:<3d} {row['rps']:.2f} req/s (rounds {row['rounds']})  "
                      f"p50 {row['p50']:.2f}s  p99 {row['p99']:.2f}s  errors {row['errors']}  "
                      f"mean batch {row['batch']:.1f}  server s/image {row['per_image']:.3f}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    info = f"{args.size[0]}x{args.size[1]} px, {args.steps} steps, device {args.device}"
    print(f"\n## serve_load ({info}; model {model})\n")
    print("| batching | concurrency | requests | req/s median [rounds] | p50 s | p99 s | errors | mean batch "
          "| server s/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['rps']:.2f} {r['rounds']} | "
              f"{r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['batch']:.1f} | {r['per_image']:.3f} |")
    top = max(args.concurrency)
    on = next(r for r in rows if r["mode"] == "on" and r["concurrency"] == top)
    off = next(r for r in rows if r["mode"] == "off" and r["concurrency"] == top)
    speedup = on["rps"] / off["rps"] if off["rps"] else float("nan")
    errors = sum(r["errors"] for r in rows)  # of the rows shown (median rounds)
    print(f"\nbatching speed-up at concurrency {top}: {speedup:.2f}x (target >= 1.5x); errors: {errors} (target 0)")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
