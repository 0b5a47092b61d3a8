"""Inference speed: seconds per image.

    python benchmarks/inference.py                 # CPU: tiny preset at 128² (+ the GPU table when CUDA is present)
    python benchmarks/inference.py --quick         # fewer repeats, no torch.compile: a bounded one-shot GPU run
    python benchmarks/inference.py --gpu-only --compile

CPU: the tiny preset (embedded default) at 128×128, the released sampler (50-step DDPM) and the fast one
(20-step DPM-Solver++). GPU (CUDA only): ``sd21`` random-init at 512×512 (timings do not depend on the
weights), the released configuration (50-step DDPM, fp32, eager) beside ours (20-step DPM-Solver++, bf16,
SDPA attention, optionally torch.compile). Target on one H200/H100: <= 2.0 s per 512² image at 20 steps.

Prints a markdown table; ``--record`` appends it to benchmarks/RESULTS.md under "## Inference".
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from deblurdiff import DeblurDiffPipeline
from deblurdiff.ops import eac_backend

RESULTS = Path(__file__).with_name("RESULTS.md")


def seconds_per_image(pipe, image, *, steps, sampler, repeats, warmup, deadline) -> tuple[float, int]:
    """Median wall time of ``repeats`` calls after ``warmup`` calls (compilation happens in warm-up)."""
    device = pipe._execution_device

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe(image, num_inference_steps=steps, sampler=sampler, output_type="pt",
             generator=torch.Generator(device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeats):
        times.append(once())
        if time.monotonic() > deadline:  # bounded: a one-shot run on a lent GPU must finish
            break
    return statistics.median(times), len(times)


def cpu_rows(args, deadline) -> list[str]:
    pipe = DeblurDiffPipeline.from_preset("tiny")
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    rows = []
    for steps, sampler in ((50, "ddpm"), (20, "dpmpp")):
        s, n = seconds_per_image(pipe, image, steps=steps, sampler=sampler, repeats=1 if args.quick else 3,
                                 warmup=1, deadline=deadline)
        rows.append(f"| tiny | 128² | {sampler} | {steps} | fp32 | eager | cpu ({torch.get_num_threads()} threads) "
                    f"| {s:.2f} | {n} |")
    return rows


def gpu_rows(args, deadline) -> list[str]:
    image = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(0))
    rows = []
    configs = [("released", 50, "ddpm", torch.float32, False), ("ours", 20, "dpmpp", torch.bfloat16, False)]
    if args.compile:
        configs.append(("ours+compile", 20, "dpmpp", torch.bfloat16, True))
    for name, steps, sampler, dtype, compile_ in configs:
        if time.monotonic() > deadline:
            rows.append(f"| sd21 {name} | 512² | {sampler} | {steps} | - | - | skipped: time budget spent | - | - |")
            continue
        # Build straight on the GPU (no 5 GB CPU init); random weights time like trained ones.
        pipe = DeblurDiffPipeline.from_preset("sd21", random_init=True, device="cuda", torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        if compile_:
            for module in (pipe.unet, pipe.controlnet, pipe.lkpn):
                module.compile()
        torch.cuda.reset_peak_memory_stats()
        s, n = seconds_per_image(pipe, image, steps=steps, sampler=sampler, repeats=2 if args.quick else 5,
                                 warmup=2 if compile_ else 1, deadline=deadline)
        peak = torch.cuda.max_memory_allocated() / 2**30
        mode = "torch.compile" if compile_ else "eager"
        rows.append(f"| sd21 {name} | 512² | {sampler} | {steps} | {str(dtype).removeprefix('torch.')} "
                    f"| {mode}, SDPA | {torch.cuda.get_device_name()} (peak {peak:.1f} GiB) | {s:.2f} | {n} |")
        del pipe
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (one-shot runs)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on GPU")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting new timings after this long")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s

    header = ["| model | size | sampler | steps | dtype | mode | device | s / image | runs |",
              "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    if not args.gpu_only:
        rows += cpu_rows(args, deadline)
    if not args.cpu_only:
        if torch.cuda.is_available():
            rows += gpu_rows(args, deadline)
        else:
            print("no CUDA device: GPU rows skipped", file=sys.stderr)
    machine = f"{platform.machine()}, torch {torch.__version__}, EAC backend " \
              f"{eac_backend(torch.device('cuda' if torch.cuda.is_available() else 'cpu'))}"
    table = "\n".join([f"{date.today()} — {machine}", "", *header, *rows])
    print(table)
    if args.record:
        with RESULTS.open("a") as f:
            f.write(f"\n### benchmarks/inference.py{' --quick' if args.quick else ''}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
