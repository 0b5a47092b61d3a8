"""Benchmark of archive restore, `deblurdiff deblur` on Ray Data (issue 24).

    .venv/bin/python benchmarks/archive_restore.py              # CPU table (tiny preset), GPU table if CUDA
    .venv/bin/python benchmarks/archive_restore.py --quick      # fewer images, for a smoke run
    .venv/bin/python benchmarks/archive_restore.py --gpu-only   # only the GPU section (on a lent GPU)

CPU section (a fresh local Ray instance with ``--cpus`` logical CPUs, default 2): the packaged tiny
model with its validated settings, on distinct photo crops (scikit-image samples) of 256² and 512²:

- images/s with 1 and 2 replicas: end to end (wall time of the job, actor start-up included) and
  steady (images after the first / time from the first to the last image finished); best of
  ``--repeats`` interleaved runs (other load on the machine only ever slows a run);
- peak RSS for 100 vs 2000 inputs (64² images): sampled every 50 ms over the driver and every Ray
  process (sum), and the largest single Ray worker process. Flat = the job streams.

GPU section (skipped without CUDA): sd21-size random weights (``from_preset("sd21", random_init=True)``)
saved once, loaded in bf16, 512² inputs: the single-process loop (read, decode, restore, encode,
write one after another on the same GPU) vs the Ray Data job with one replica on that GPU (decode
and encode overlap with the diffusion), images/s and GPU utilisation (nvidia-smi, sampled).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import PeakRSS, make_corpus  # noqa: E402 - the synth benchmark's corpus and memory sampler


def restore(corpus: Path, out: Path, model: str, replicas: int | None, local: bool = False, **settings):
    from deblurdiff.pipelines.restore import plan_restore

    shutil.rmtree(out, ignore_errors=True)
    job = plan_restore([str(corpus)], str(out), model=model, replicas=replicas, **settings)
    with PeakRSS() as mem:
        summary = job.run(local=local)
    shutil.rmtree(out, ignore_errors=True)
    assert summary.failed == 0, f"{summary.failed} images failed"
    return summary, mem


# ----------------------------------------------------------------------------- CPU
def cpu_section(args, tmp: Path) -> None:
    import ray

    from deblurdiff import _ray

    n_speed, n_small, n_large = (12, 20, 100) if args.quick else (args.images, 100, 2000)
    sizes = (256, 512)
    corpora = {s: make_corpus(tmp / f"speed{s}", n_speed, size=(s, s)) for s in sizes}
    _ray.connect("local", num_cpus=args.cpus, include_dashboard=False, object_store_memory=1 << 30)
    ray.data.DataContext.get_current().enable_progress_bars = False
    load = os.getloadavg()
    print(f"\n## CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Ray with {args.cpus} CPUs; "
          f"model {args.model}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    print("\n| input | replicas | images | end-to-end images/s | steady images/s | steady vs 1 replica |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        best: dict[int, tuple] = {}
        for _ in range(args.repeats):
            for replicas in (1, 2):
                summary, _ = restore(corpora[size], tmp / "out", args.model, replicas)
                if replicas not in best or summary.steady_images_per_s > best[replicas].steady_images_per_s:
                    best[replicas] = summary
        for replicas in (1, 2):
            s = best[replicas]
            ratio = s.steady_images_per_s / best[1].steady_images_per_s
            print(f"| {size}² | {replicas} | {s.restored} | {s.images_per_s:.2f} | {s.steady_images_per_s:.2f} "
                  f"| {ratio:.2f}× |", flush=True)

    print("\n| inputs (64²) | replicas | peak RSS, all processes | largest Ray worker | end-to-end images/s |")
    print("|---|---|---|---|---|")
    for n in (n_small, n_large):
        corpus = make_corpus(tmp / f"mem{n}", n, size=(64, 64))
        summary, mem = restore(corpus, tmp / "out", args.model, 2)
        print(f"| {n} | 2 | {mem.total / 2**20:.0f} MiB | {mem.worker / 2**20:.0f} MiB | "
              f"{summary.images_per_s:.2f} |", flush=True)
        shutil.rmtree(corpus, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    ray.shutdown()


# ----------------------------------------------------------------------------- GPU
class GpuUtilisation:
    """Mean GPU utilisation (%) from ``nvidia-smi``, sampled every 0.2 s while in the ``with`` block."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                       "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(float(text.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.2)

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def gpu_section(args, tmp: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        print("\n## GPU: skipped (no CUDA device here)")
        return
    import ray

    from deblurdiff import DeblurDiffPipeline, _ray

    model = tmp / "sd21-random"
    DeblurDiffPipeline.from_preset("sd21", random_init=True, torch_dtype=torch.bfloat16).save_pretrained(model)
    corpus = make_corpus(tmp / "gpu512", args.gpu_images, size=(512, 512))
    settings = dict(sampler="dpmpp", steps=args.gpu_steps, strength=1.0, dtype="bfloat16")
    print(f"\n## GPU: {torch.cuda.get_device_name(0)}; sd21-size random weights, bf16, 512², dpmpp "
          f"{args.gpu_steps} steps, {args.gpu_images} images", flush=True)
    print("\n| engine | images/s | GPU utilisation (mean) |")
    print("|---|---|---|")
    restore(make_corpus(tmp / "warm", 2, size=(512, 512)), tmp / "out", str(model), None, local=True, **settings)
    with GpuUtilisation() as util:
        loop, _ = restore(corpus, tmp / "out", str(model), None, local=True, **settings)
    print(f"| single-process loop | {loop.steady_images_per_s:.2f} | {util.mean:.0f}% |", flush=True)
    _ray.connect("local", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with GpuUtilisation() as util:
        data, _ = restore(corpus, tmp / "out", str(model), 1, **settings)
    print(f"| Ray Data, 1 replica | {data.steady_images_per_s:.2f} | {util.mean:.0f}% |")
    print(f"\nRay Data / loop: {data.steady_images_per_s / loop.steady_images_per_s:.2f}×")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (smoke run)")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--images", type=int, default=40, help="images per speed run (CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="speed runs per replica count (best kept)")
    parser.add_argument("--model", default="tiny-small-handheld", help="CPU section's model (packaged name or dir)")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--gpu-images", type=int, default=64)
    parser.add_argument("--gpu-steps", type=int, default=20)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dd-bench-restore-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# archive restore benchmark, {started}")
    try:
        if not args.gpu_only:
            cpu_section(args, tmp)
        gpu_section(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
