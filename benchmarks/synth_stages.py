"""Where a ``synth`` actor's CPU goes, stage by stage, at 256² and 512² (issue 25).

    .venv/bin/python benchmarks/synth_stages.py [--sources 12] [--crops 4] [--sizes 256 512] [--recipe realistic] [--no-thp]

Runs the actor's own code (``ShardBuilder.build``, one torch thread, no Ray) over a corpus of 768×576
JPEGs cut from scikit-image photos, and times each stage with this thread's CPU clock by wrapping the
functions that implement it (so the split stays honest on a shared machine, and no stage logic is
copied here). The same script runs against an older checkout (``PYTHONPATH=old/src``): a wrapped
name missing there is skipped. Stages:

- decode: JPEG -> RGB (``imageio.decode_rgb``); crop: the rest of ``decode_crops`` (box draw, copy);
- PSF draw: every drawn parameter and the PSF(s) (``draw_params``, ``build_kernels``);
- blur: masks and the FFT convolution (``build_masks``, ``fft_blur``);
- sensor: camera curve, highlights, Bayer mosaic/demosaic, noise field and noise (``formation``, ``noise_field``);
- JPEG stage: the camera's JPEG round trip (``formation.jpeg``);
- PNG encode: the two lossless PNGs; npy/json/tar: ``kernel.npy``, ``meta.json`` and the tar write;
- other: everything else in the actor (uint8 <-> float, clamps, copies, bookkeeping).
"""

from __future__ import annotations

import os

# As a CPU synthesis actor runs (deblurdiff.pipelines._pool.actor_env): one thread everywhere, torch's
# large tensors on huge pages. Set before numpy/torch are imported (they read it once).
# ``--no-thp``: small pages, as actors ran before issue 25.
import sys  # noqa: E402

os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
os.environ["THP_MEM_ALLOC_ENABLE"] = "0" if "--no-thp" in sys.argv else "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline import make_corpus  # noqa: E402  (benchmarks/pipeline.py, beside this script)

# stage -> the functions that implement it, as (module, attribute) where the caller looks them up. The
# synthesis module is blur_synthesis.synthesis; older checkouts (before 2026-12-07) call it .synthesize.
_SYNTHESIS = ("deblurdiff.blur_synthesis.synthesis", "deblurdiff.blur_synthesis.synthesize")
STAGES = {
    "decode": [("deblurdiff.pipelines.stages", "decode_rgb")],
    "PSF draw": [(m, n) for m in _SYNTHESIS for n in ("draw_params", "build_kernels")],
    "blur": [(m, n) for m in _SYNTHESIS for n in ("build_masks", "fft_blur")],
    "sensor": [("deblurdiff.blur_synthesis.formation", n) for n in
               ("to_linear", "to_linear_levels", "from_linear", "boost_highlights", "mosaic", "demosaic",
                "poisson_gaussian_noise")]
              + [(m, "noise_field") for m in _SYNTHESIS],
    "JPEG stage": [("deblurdiff.blur_synthesis.formation", "jpeg")],
    "PNG encode": [("deblurdiff.pipelines.shard_format", "encode_png"), ("deblurdiff.pipelines.shard_format", "encode_image")],
    "npy/json/tar": [("deblurdiff.pipelines.shard_format", "_npy_bytes"), ("deblurdiff.pipelines.shard_format", "json"),
                     ("deblurdiff.pipelines.sink.ShardWriter", "add")],
}


class StageClock:
    """Thread CPU seconds per stage; nested wrapped calls count once, in the outermost stage."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self._depth = 0

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - t
                self._depth -= 1

        return timed


def _resolve(path: str):
    """'pkg.mod' -> module; 'pkg.mod.Class' -> the class; None when this version of the code has neither."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        mod, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(mod), cls, None)


def instrument(clock: StageClock) -> None:
    import json

    for stage, targets in STAGES.items():
        for owner_path, name in targets:
            owner = _resolve(owner_path)
            if owner is None or isinstance(owner, types.FunctionType) or not hasattr(owner, name):
                continue  # not in this version of the code
            if name == "json":  # the module object: time its dumps
                owner.json = type("timed_json", (), {"dumps": staticmethod(clock.wrap(stage, json.dumps))})
                continue
            setattr(owner, name, clock.wrap(stage, getattr(owner, name)))


def measure(corpus: Path, out: Path, crop: int, crops: int, recipe: str) -> tuple[dict[str, float], int]:
    import torch

    from deblurdiff.pipelines import synth
    from deblurdiff.pipelines.synth import ShardBuilder, plan_synth

    torch.set_num_threads(1)
    job = plan_synth([str(corpus)], str(out), recipe=recipe, crop=crop, crops_per_image=crops, seed=0, shard_size=16)
    builder = ShardBuilder(recipe=job.recipe, crop=crop, crops_per_image=crops, seed=0, output=job.output,
                           filesystems=job.corpus.filesystems, batch_size=job.batch_size, device="cpu", threads=1)
    job.output.prepare()
    builder.build(job.plans[0])  # warm-up: FFT plans, allocator, lazy imports
    clock = StageClock()
    decode_crops = synth.decode_crops
    clock_crop = StageClock()
    synth.decode_crops = clock_crop.wrap("crop", decode_crops)
    instrument(clock)
    t = time.thread_time()
    samples = sum(builder.build(plan).samples for plan in job.plans)
    total = time.thread_time() - t
    synth.decode_crops = decode_crops
    cpu = dict(clock.cpu)
    cpu["crop"] = clock_crop.cpu.get("crop", 0.0) - cpu.get("decode", 0.0)
    cpu["other"] = total - sum(cpu.values())
    cpu["total"] = total
    return cpu, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=int, default=12)
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--recipe", default="realistic")
    ap.add_argument("--no-thp", action="store_true", help="torch tensors on 4 KB pages (actors before issue 25)")
    args = ap.parse_args()
    import deblurdiff

    tmp = Path(tempfile.mkdtemp(prefix="dd-synth-stages-"))
    corpus = make_corpus(tmp / "corpus", args.sources, size=(768, 576))
    load0 = os.getloadavg()
    results = {size: measure(corpus, tmp / f"out{size}", size, args.crops, args.recipe) for size in args.sizes}
    load1 = os.getloadavg()
    print(f"# synth actor CPU by stage: {args.sources} sources (768x576 JPEG) x {args.crops} crops, recipe "
          f"{args.recipe}, 1 thread, huge pages {'off' if args.no_thp else 'on'}, thread CPU time; code {Path(deblurdiff.__file__).parent}")
    print(f"# {platform.machine()} {os.cpu_count()} cores; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end")
    order = ["decode", "crop", "PSF draw", "blur", "sensor", "JPEG stage", "PNG encode", "npy/json/tar", "other", "total"]
    print("| stage | " + " | ".join(f"{s}² ms/pair | {s}² %" for s in args.sizes) + " |")
    print("|---|" + "---|---|" * len(args.sizes))
    for stage in order:
        cells = []
        for size in args.sizes:
            cpu, n = results[size]
            cells += [f"{1e3 * cpu.get(stage, 0.0) / n:.2f}", f"{100 * cpu.get(stage, 0.0) / cpu['total']:.0f}"]
        print(f"| {stage} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
