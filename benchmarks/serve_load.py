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

    .venv/bin/python benchmarks/serve_load.py --soak                # 3 min at concurrency 32 (issue 15)

``--soak``: one app (batching on), ``--soak-seconds`` of closed-loop clients sending a fixed mix of
valid images (PNG / JPEG / WebP, several sizes) and every hostile class (garbage, empty, truncated,
GIF, wrong Content-Type, pixel bomb, bad parameters, a body over the limit). It prints the status of
every class against the one expected, then the model replica's, the ingress replica's and the HTTP
proxy's memory (RSS) and open file descriptors, sampled every 2 s. Targets: no 500 (no unexpected
status at all), replica RSS growth < 10 % from the first to the last minute, no growth in open file
descriptors from before the load to after it.
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
    p.add_argument("--soak", action="store_true", help="bounded soak: valid and hostile requests (see above)")
    p.add_argument("--soak-seconds", type=float, default=180.0)
    p.add_argument("--soak-concurrency", type=int, default=32)
    return p.parse_args(argv)


def send(url: str, body, content_type: str = "image/png", timeout: float = 600.0):
    """``(status, seconds, headers, body)`` of one POST; status 0 and the exception name on a
    connection error (a reset, a refused connection)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, time.perf_counter() - start, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, time.perf_counter() - start, e.headers, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, time.perf_counter() - start, {}, type(getattr(e, "reason", e)).__name__.encode()


def post(url: str, body: bytes, timeout: float = 600.0) -> tuple[int, float, int, float]:
    """(status, seconds, server batch size, server seconds per image) for one request; status 0 on a
    connection error."""
    status, seconds, headers, _ = send(url, body, timeout=timeout)
    if status != 200:
        return status, seconds, 0, float("nan")
    batch = int(headers.get("X-Deblur-Batch-Size", 0))
    return status, seconds, batch, float(headers.get("X-Deblur-Inference-Seconds", "nan")) / max(batch, 1)


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

    if args.soak:
        return soak_main(args, model)
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


# ----------------------------------------------------------------------------- soak (issue 15)
def _photo(name: str, width: int, height: int):
    import numpy as np
    from PIL import Image
    from skimage import data

    rgb = getattr(data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return Image.fromarray(rgb[..., :3]).resize((width, height), Image.BICUBIC)


def _encoded(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def soak_mix(steps: int) -> list[dict]:
    """The request classes of the soak, in the order clients cycle through them: valid images
    (statuses 200) interleaved with every hostile class and the status it must get."""
    png = _encoded(_photo("coffee", 48, 40), "PNG")
    q = f"steps={steps}"
    valid = [
        ("png 64x48", _encoded(_photo("astronaut", 64, 48), "PNG"), "image/png", q),
        ("jpeg 96x72", _encoded(_photo("chelsea", 96, 72), "JPEG"), "image/jpeg", q),
        ("webp 50x70", _encoded(_photo("rocket", 50, 70), "WEBP"), "image/webp", q),
        ("png 160x120 rgba", _encoded(_photo("coffee", 160, 120).convert("RGBA"), "PNG"), "image/png", q),
    ]
    hostile = [
        ("garbage", b"this is not an image" * 10, "application/octet-stream", q, 400),
        ("empty", b"", "image/png", q, 400),
        ("truncated png", png[: len(png) // 2], "image/png", q, 400),
        ("gif", _encoded(_photo("coffee", 20, 20), "GIF"), "image/gif", q, 415),
        ("text/plain", png, "text/plain", q, 415),
        ("pixel bomb 60000^2", _png_header_only(60000, 60000), "image/png", q, 413),
        ("steps=0", png, "image/png", "steps=0", 422),
        ("unknown parameter", png, "image/png", f"{q}&colour=red", 422),
        ("body 21 MB", bytes(21 * 1024 * 1024), "image/png", q, 413),
    ]
    mix = []
    for i, (name, body, ctype, query, status) in enumerate(hostile):  # valid, hostile, valid, hostile...
        v_name, v_body, v_type, v_query = valid[i % len(valid)]
        mix.append({"name": v_name, "body": v_body, "type": v_type, "query": v_query, "expect": 200})
        mix.append({"name": name, "body": body, "type": ctype, "query": query, "expect": status})
    return mix


def _serve_processes(app_name: str) -> dict[str, int]:
    """PIDs of this app's model replica, ingress replica and the HTTP proxy (all on this machine)."""
    import ray
    from ray.util.state import list_actors

    # The connected cluster's own address: without it the state API picks the newest cluster on
    # the machine, which need not be ours.
    address = ray.get_runtime_context().gcs_address
    pids = {}
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000):
        if actor.class_name == f"ServeReplica:{app_name}:DeblurModel":
            pids["model replica"] = actor.pid
        elif actor.class_name == f"ServeReplica:{app_name}:DeblurIngress":
            pids["ingress replica"] = actor.pid
        elif actor.class_name == "ProxyActor":
            pids["http proxy"] = actor.pid
    if len(pids) != 3:
        raise RuntimeError(f"found only {sorted(pids)} of app {app_name!r} on the cluster at {address}")
    return pids


def soak(base_url: str, app_name: str, *, seconds: float, concurrency: int, steps: int,
         sample_every_s: float = 2.0) -> dict:
    """Closed-loop clients cycling through :func:`soak_mix` for ``seconds``; process samples alongside.

    Returns ``{"classes": {name: {"expect", "statuses": {status: n}, "p50", "max"}}, "processes": {...},
    "unexpected": n, "server_errors": n, "requests": n, "seconds": s}``.
    """
    import psutil

    mix = soak_mix(steps)
    pids = _serve_processes(app_name)
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def fds() -> dict[str, int]:
        return {name: p.num_fds() for name, p in procs.items()}

    for item in [m for m in mix if m["expect"] == 200][:4]:  # warm-up: each valid size once
        send(f"{base_url}v1/deblur?{item['query']}", item["body"], item["type"])
    fds_before = fds()
    samples: list[tuple[float, dict[str, int]]] = []  # (t, {process: rss bytes})
    results: list[tuple[str, int, int, float, bool]] = []  # (class, expected, status, seconds, json error)
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + seconds
    next_index = [0]

    def client() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                item = mix[next_index[0] % len(mix)]
                next_index[0] += 1
            status, took, headers, _ = send(f"{base_url}v1/deblur?{item['query']}", item["body"], item["type"])
            is_json = status != 200 and str(headers.get("Content-Type", "")).startswith("application/json")
            with lock:
                results.append((item["name"], item["expect"], status, took, is_json))

    def sampler() -> None:
        while time.perf_counter() < stop_at:
            samples.append((time.perf_counter() - start, {n: p.memory_info().rss for n, p in procs.items()}))
            time.sleep(sample_every_s)

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    elapsed = time.perf_counter() - start
    watcher.join()
    time.sleep(2)  # let closed connections settle before counting descriptors again
    fds_after = fds()

    window = min(60.0, elapsed / 3)  # first and last minute (a third of a short soak)
    processes = {}
    for name in procs:
        # On a stalled machine a window may hold no sample: then its nearest sample stands for it.
        first = [rss[name] for t, rss in samples if t < window] or [samples[0][1][name]]
        last = [rss[name] for t, rss in samples if t >= elapsed - window] or [samples[-1][1][name]]
        first_mb, last_mb = statistics.fmean(first) / 2**20, statistics.fmean(last) / 2**20
        processes[name] = {"pid": pids[name], "rss_first_mb": first_mb, "rss_last_mb": last_mb,
                           "rss_growth": last_mb / first_mb - 1, "fds_before": fds_before[name],
                           "fds_after": fds_after[name]}
    classes: dict[str, dict] = {}
    for name, expect, status, took, _ in results:
        c = classes.setdefault(name, {"expect": expect, "statuses": {}, "times": []})
        c["statuses"][status] = c["statuses"].get(status, 0) + 1
        c["times"].append(took)
    for c in classes.values():
        times = sorted(c.pop("times"))
        c["p50"], c["max"] = times[len(times) // 2], times[-1]
    unexpected = sum(1 for _, expect, status, _, is_json in results
                     if status != expect or (status != 200 and not is_json))
    return {"classes": classes, "processes": processes, "unexpected": unexpected,
            "server_errors": sum(1 for r in results if r[2] >= 500), "requests": len(results),
            "seconds": elapsed, "window_s": window}


def print_soak(result: dict, concurrency: int) -> None:
    print(f"\n## serve_load --soak ({result['seconds']:.0f} s, concurrency {concurrency}, "
          f"{result['requests']} requests, {result['requests'] / result['seconds']:.1f} req/s)\n")
    print("| request class | expected | got (status: count) | p50 s | max s |")
    print("|---|---|---|---|---|")
    for name, c in result["classes"].items():
        got = ", ".join(f"{s}: {n}" for s, n in sorted(c["statuses"].items()))
        print(f"| {name} | {c['expect']} | {got} | {c['p50']:.2f} | {c['max']:.2f} |")
    w = result["window_s"]
    print(f"\n| process | RSS first {w:.0f} s MiB | RSS last {w:.0f} s MiB | growth | open fds before | after |")
    print("|---|---|---|---|---|---|")
    for name, p in result["processes"].items():
        print(f"| {name} (pid {p['pid']}) | {p['rss_first_mb']:.0f} | {p['rss_last_mb']:.0f} | "
              f"{100 * p['rss_growth']:+.1f} % | {p['fds_before']} | {p['fds_after']} |")
    replicas = [p for n, p in result["processes"].items() if "replica" in n]
    print(f"\nunexpected statuses: {result['unexpected']} (target 0); 5xx: {result['server_errors']} (target 0); "
          f"max replica RSS growth {100 * max(p['rss_growth'] for p in replicas):+.1f} % (target < 10 %); "
          f"fd growth {max(p['fds_after'] - p['fds_before'] for p in result['processes'].values()):+d} (target <= 0)")


def soak_ok(result: dict) -> bool:
    replicas = [p for n, p in result["processes"].items() if "replica" in n]
    return (result["unexpected"] == 0 and result["server_errors"] == 0
            and all(p["rss_growth"] < 0.10 for p in replicas)
            and all(p["fds_after"] <= p["fds_before"] for p in result["processes"].values()))


def soak_main(args, model: str) -> int:
    import ray
    from ray import serve

    from deblurdiff._ray import connect
    from deblurdiff.serving.app import build_app

    # The dashboard serves the state API (list_actors), which finds the replicas' PIDs.
    connect(args.address or "local", **({} if args.address else {"include_dashboard": True}))
    port = args.port
    if port is None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(build_app({"model": model, "device": args.device, "num_cpus": args.num_cpus,
                             "max_ongoing_requests": 32, "max_queued_requests": 256}),
                  name="soak", route_prefix="/")
        result = soak(f"http://127.0.0.1:{port}/", "soak", seconds=args.soak_seconds,
                      concurrency=args.soak_concurrency, steps=args.steps)
    finally:
        serve.shutdown()
        ray.shutdown()
    print_soak(result, args.soak_concurrency)
    return 0 if soak_ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
