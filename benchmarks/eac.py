"""EAC op benchmark: deblurdiff.ops.eac vs the F.unfold formulation, CPU and (where present) CUDA.

    .venv/bin/python benchmarks/eac.py                 # CPU section, then the GPU section if CUDA exists
    .venv/bin/python benchmarks/eac.py --skip-cpu      # GPU only (e.g. on an H100)

Prints markdown tables (paste them into benchmarks/RESULTS.md).

CPU (issue 3 target): 2 threads, B=8, C=4, 64×64, k=5, float32, forward+backward
  - time: ours vs ``eac_unfold`` (deblurdiff.ops.reference), measured in the same run, rounds
    interleaved (ours, unfold, ours, ...) so load from other processes hits both alike; medians.
    Target: speedup ≥ 3×.
  - peak extra memory: from the torch profiler's allocation timeline (every tensor the CPU allocator
    hands out): peak bytes alive during forward+backward above what was alive before, minus the two
    gradients every implementation must return (d input, d kernel), in units of the output size.
    Ours is the output itself (1.0×) plus any temporaries. Target: ≤ 2×.

GPU (runs only with CUDA; self-contained): for B=8,C=4,128×128 and a 512×512 latent (B=1,C=4), k=5,
float32 and bfloat16:
  - achieved bandwidth = bytes that must move / time, forward (read x and K, write out) and
    backward (read grad_out, x, K; write d x and d K), against the device's measured device-to-device
    copy bandwidth (2 × bytes / time of a 1 GiB ``copy_``). Targets: forward ≥ 70 %, backward ≥ 50 %.
    L2 is flushed before every timed call, so numbers are DRAM numbers.
    Op times are CUDA-graph replays (kernel time without the Python launch overhead, which exceeds
    the kernels at 128×128); the fwd+bwd comparison is eager autograd, as training runs it.
  - forward+backward vs the F.unfold formulation on the GPU (time and peak extra memory).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch

from deblurdiff.ops import eac, eac_backend
from deblurdiff.ops.reference import eac_unfold

K = 5


def make_inputs(b, c, h, w, dtype, device, groups=None, seed=0):
    g = c if groups is None else groups
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, device=device, dtype=torch.float32).to(dtype)
    kernel = (torch.randn(b, g * K * K, h, w, generator=gen, device=device, dtype=torch.float32) / K).to(dtype)
    grad_out = torch.randn(b, c, h, w, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return x, kernel, grad_out


def fwd_bwd(fn, x, kernel, grad_out):
    """One training-style step: forward, backward into both inputs; returns nothing."""
    x.grad = kernel.grad = None
    out = fn(x, kernel, K)
    out.backward(grad_out)


# ============================================================================== CPU
def cpu_peak_extra_bytes(fn, x, kernel, grad_out) -> float:
    """Peak CPU tensor bytes alive during fn's forward+backward above those alive before it, minus
    the returned gradients (torch profiler memory timeline)."""
    from torch.profiler import ProfilerActivity, profile

    x.grad = kernel.grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fwd_bwd(fn, x, kernel, grad_out)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export_memory_timeline is marked deprecated (still works)
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)  # per time step: bytes alive per category
    alive = [sum(step) for step in sizes]
    gradients = (x.grad.numel() + kernel.grad.numel()) * x.element_size()
    return max(alive) - alive[0] - gradients


def time_interleaved(steps: dict, rounds: int, per_round: int) -> tuple[dict, dict]:
    """(median, best) seconds per call of each step, rounds interleaved across the steps."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(per_round):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return ({name: statistics.median(ts) for name, ts in times.items()},
            {name: min(ts) for name, ts in times.items()})


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def run_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    b, c, h, w = 8, 4, 64, 64
    print(f"\n## EAC CPU — {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, backend {eac_backend('cpu')!r}, "
          f"{datetime.date.today().isoformat()}\n")
    print(f"B={b}, C={c}, {h}×{w}, k={K}, G=C; {args.rounds}×{args.per_round} calls each, ours and "
          f"unfold interleaved; ms as median (best); load average at start {load_average()}\n")
    print("| dtype | pass | ours ms | unfold ms | speedup median (best) | ours peak extra (× out) | "
          "unfold peak extra (× out) | target (on medians) |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        x, kernel, grad_out = make_inputs(b, c, h, w, dtype, "cpu")
        out_bytes = x.numel() * x.element_size()
        x.requires_grad_()
        kernel.requires_grad_()
        with torch.no_grad():  # same numbers before timing anything
            torch.testing.assert_close(eac(x, kernel, K).float(), eac_unfold(x, kernel, K).float(),
                                       rtol=2e-2, atol=5e-2)
        for name, fn in (("ours", eac), ("unfold", eac_unfold)):
            fwd_bwd(fn, x, kernel, grad_out)  # warm-up (extension load, allocator)
        steps = {
            "ours fwd": lambda: eac(x.detach(), kernel.detach(), K),
            "unfold fwd": lambda: eac_unfold(x.detach(), kernel.detach(), K),
            "ours": lambda: fwd_bwd(eac, x, kernel, grad_out),
            "unfold": lambda: fwd_bwd(eac_unfold, x, kernel, grad_out),
        }
        med, best = time_interleaved(steps, args.rounds, args.per_round)
        mem = {}
        for name, fn in (("ours", eac), ("unfold", eac_unfold)):
            try:
                mem[name] = f"{cpu_peak_extra_bytes(fn, x, kernel, grad_out) / out_bytes:.2f}"
            except Exception as err:  # noqa: BLE001 - a profiler API change must not hide the timings
                mem[name] = f"n/a ({type(err).__name__})"
        name = str(dtype).replace("torch.", "")
        for label, ours, unfold in (("fwd", "ours fwd", "unfold fwd"), ("fwd+bwd", "ours", "unfold")):
            speed = med[unfold] / med[ours]
            target = ""
            if dtype == torch.float32 and label == "fwd+bwd":
                mem_ok = mem["ours"].replace(".", "", 1).isdigit() and float(mem["ours"]) <= 2.0
                target = ("speedup ≥ 3×: " + ("PASS" if speed >= 3 else "FAIL")
                          + "; memory ≤ 2×: " + ("PASS" if mem_ok else "FAIL"))
            mems = (mem["ours"], mem["unfold"]) if label == "fwd+bwd" else ("", "")
            print(f"| {name} | {label} | {med[ours] * 1e3:.2f} ({best[ours] * 1e3:.2f}) | "
                  f"{med[unfold] * 1e3:.2f} ({best[unfold] * 1e3:.2f}) | {speed:.1f}× "
                  f"({best[unfold] / best[ours]:.1f}×) | {mems[0]} | {mems[1]} | {target} |")
    print(f"\nload average at end {load_average()}")


# ============================================================================== GPU
def cuda_time(fn, iters: int, flush: torch.Tensor | None) -> float:
    """Median seconds of fn() on the current stream (CUDA events), L2 flushed before each call."""
    times = []
    for _ in range(iters):
        if flush is not None:
            flush.zero_()  # evict L2 so every call reads DRAM
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def kernel_time(fn, iters: int, flush: torch.Tensor) -> tuple[float, str]:
    """Median seconds of fn's GPU work without Python/dispatch overhead: fn is captured once in a
    CUDA graph and the graph is replayed (at 128×128 the kernels take ~20 µs, less than the Python
    custom-op call that launches them). Falls back to eager timing if capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return cuda_time(graph.replay, iters, flush), "graph"
    except Exception as err:  # noqa: BLE001 - report eager numbers rather than none
        print(f"(CUDA graph capture failed, eager timing: {type(err).__name__}: {err})")
        return cuda_time(fn, iters, flush), "eager"


def copy_bandwidth(iters: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB buffer."""
    n = 1 << 30
    free, _ = torch.cuda.mem_get_info()
    n = min(n, free // 4)
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    seconds = cuda_time(lambda: dst.copy_(src), iters, None)
    return 2 * n / seconds


def cuda_peak_extra(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def run_gpu(args) -> None:
    props = torch.cuda.get_device_properties(0)
    backend = eac_backend("cuda")
    print(f"\n## EAC GPU — {props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}, backend {backend!r}, "
          f"{datetime.date.today().isoformat()}\n")
    if backend != "cuda":
        print(f"WARNING: the compiled CUDA kernels are not running (backend {backend!r}); see the warning above.\n")
    copy_bw = copy_bandwidth(args.gpu_iters)
    print(f"device-to-device copy bandwidth (1 GiB copy_, read+write): {copy_bw / 1e9:.0f} GB/s\n")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # > L2 on any current GPU

    print("| shape (B,C,H,W), k=5 | dtype | op timing | fwd µs | fwd GB/s | fwd % copy | bwd µs | bwd GB/s | "
          "bwd % copy | fwd+bwd µs ours | fwd+bwd µs unfold | speedup | peak extra ours / unfold (× out) | "
          "targets (fwd ≥ 70 %, bwd ≥ 50 %) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for b, c, h, w in args.gpu_shapes:
        for dtype in (torch.float32, torch.bfloat16):
            label = f"({b},{c},{h},{w}) | {str(dtype).replace('torch.', '')}"
            try:
                print(gpu_row(b, c, h, w, dtype, copy_bw, flush, args.gpu_iters, label), flush=True)
            except Exception as err:  # noqa: BLE001 - one failing case (e.g. OOM) must not end the run
                print(f"| {label} | ERROR: {type(err).__name__}: {str(err).splitlines()[0][:120]} |", flush=True)
            torch.cuda.empty_cache()


def gpu_row(b, c, h, w, dtype, copy_bw, flush, iters, label) -> str:
    x, kernel, grad_out = make_inputs(b, c, h, w, dtype, "cuda")
    groups = kernel.shape[1] // (K * K)
    item = x.element_size()
    # Correctness first: CUDA vs the CPU op on the same inputs (float32 math on both).
    sub = (slice(0, 1), slice(None), slice(0, min(h, 64)), slice(0, min(w, 64)))
    torch.testing.assert_close(eac(x[sub], kernel[sub], K).float().cpu(),
                               eac(x[sub].cpu(), kernel[sub].cpu(), K).float(), rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        forward = lambda: torch.ops.deblurdiff.eac(x, kernel, K)  # noqa: E731
        backward = lambda: (torch.ops.deblurdiff.eac_grad_input(grad_out, kernel, K),  # noqa: E731
                            torch.ops.deblurdiff.eac_grad_kernel(grad_out, x, K, groups))
        for _ in range(3):
            forward()
            backward()
        t_fwd, how_fwd = kernel_time(forward, iters, flush)
        t_bwd, how_bwd = kernel_time(backward, iters, flush)
    n_img, n_ker = x.numel(), kernel.numel()
    fwd_bytes = (2 * n_img + n_ker) * item  # read x, K; write out
    bwd_bytes = (3 * n_img + 2 * n_ker) * item  # read grad_out, x, K; write d x, d K
    fwd_bw, bwd_bw = fwd_bytes / t_fwd, bwd_bytes / t_bwd

    xg, kg = x.clone().requires_grad_(), kernel.clone().requires_grad_()
    for fn in (eac, eac_unfold):
        fwd_bwd(fn, xg, kg, grad_out)
    t_ours = cuda_time(lambda: fwd_bwd(eac, xg, kg, grad_out), iters, flush)
    t_unfold = cuda_time(lambda: fwd_bwd(eac_unfold, xg, kg, grad_out), iters, flush)
    grads = (xg.numel() + kg.numel()) * item
    xg.grad = kg.grad = None
    mem_ours = cuda_peak_extra(lambda: fwd_bwd(eac, xg, kg, grad_out)) - grads
    xg.grad = kg.grad = None
    mem_unfold = cuda_peak_extra(lambda: fwd_bwd(eac_unfold, xg, kg, grad_out)) - grads
    out_bytes = n_img * item
    ok = ("PASS" if fwd_bw >= 0.7 * copy_bw else "FAIL") + " / " + ("PASS" if bwd_bw >= 0.5 * copy_bw else "FAIL")
    how = how_fwd if how_fwd == how_bwd else f"{how_fwd}/{how_bwd}"
    return (f"| {label} | {how} | {t_fwd * 1e6:.0f} | {fwd_bw / 1e9:.0f} | {100 * fwd_bw / copy_bw:.0f} % | "
            f"{t_bwd * 1e6:.0f} | {bwd_bw / 1e9:.0f} | {100 * bwd_bw / copy_bw:.0f} % | "
            f"{t_ours * 1e6:.0f} | {t_unfold * 1e6:.0f} | {t_unfold / t_ours:.1f}× | "
            f"{mem_ours / out_bytes:.1f} / {mem_unfold / out_bytes:.1f} | {ok} |")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected B,C,H,W, got {text!r}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (target: 2)")
    parser.add_argument("--rounds", type=int, default=5, help="CPU: interleaved rounds")
    parser.add_argument("--per-round", type=int, default=4, help="CPU: calls per method per round")
    parser.add_argument("--gpu-iters", type=int, default=30, help="GPU: timed calls per measurement")
    parser.add_argument("--gpu-shapes", type=parse_shape, nargs="+",
                        default=[(8, 4, 128, 128), (1, 4, 512, 512)], help="GPU shapes as B,C,H,W")
    args = parser.parse_args()
    if not args.skip_cpu:
        run_cpu(args)
    if not args.skip_gpu:
        if torch.cuda.is_available():
            run_gpu(args)
        else:
            print("\n(GPU section skipped: no CUDA device)")


if __name__ == "__main__":
    main()
