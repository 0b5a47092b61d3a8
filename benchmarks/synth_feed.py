"""Can the data engine feed training on the fly (``data.images:``)? Pairs one core produces per second
vs pairs a training step consumes (issue 25).

    .venv/bin/python benchmarks/synth_feed.py [--input DIR] [--tiny-step-s 1.0] [--sd21-samples-per-s 10.3]

Production: the on-the-fly stream's own per-sample functions (``stages.decode_crops`` then
``stages.synthesize_crops`` in batches of 8, recipe ``realistic``), one thread, thread CPU time, as its
actors run them; no Ray (the stream adds its scheduling on top). Inputs: ``--input`` (a folder of
photos), else 768×576 JPEGs cut from scikit-image photos. Consumption: the global batch over a step's
time — tiny (64² crops, batch 8) at ``--tiny-step-s`` (RESULTS.md "Training": ~1.0 s on 2 CPU cores),
sd21 (512², samples/s per GPU) at ``--sd21-samples-per-s`` (RESULTS.md "GPU session": 10.30 on an H100,
DeepSpeed ZeRO-2 + bf16). Cores needed = consumption / production per core.
"""

from __future__ import annotations

import os

# As a CPU synthesis actor runs (deblurdiff.pipelines._pool.actor_env); before numpy/torch imports.
os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "THP_MEM_ALLOC_ENABLE")})

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pipeline import make_corpus  # noqa: E402  (benchmarks/pipeline.py, beside this script)


def produce(files: list[Path], crop: int, crops_per_image: int, batch: int = 8) -> tuple[float, int, float]:
    """Thread CPU seconds per pair for decode+crop and for synthesis, over ``files``."""
    import torch

    from deblurdiff.blur_synthesis import load_recipe
    from deblurdiff.imageio import ImageDecodeError
    from deblurdiff.pipelines.plan import sample_seed
    from deblurdiff.pipelines.stages import decode_crops, synthesize_crops

    torch.set_num_threads(1)
    recipe = load_recipe("realistic")
    decode_s = synth_s = 0.0
    pending, seeds, pairs = [], [], 0
    for f in files:
        t = time.thread_time()
        try:
            crops = decode_crops(f.read_bytes(), f.name, list(range(crops_per_image)), crop, 0)
        except ImageDecodeError:
            continue  # smaller than the crop
        decode_s += time.thread_time() - t
        for c in crops:
            pending.append(c.pixels)
            seeds.append(sample_seed(0, f.name, c.crop_index, "blur"))
        while len(pending) >= batch or (f == files[-1] and pending):
            t = time.thread_time()
            synthesize_crops(np.stack(pending[:batch]), seeds[:batch], recipe)
            synth_s += time.thread_time() - t
            pairs += len(pending[:batch])
            del pending[:batch], seeds[:batch]
    return decode_s / pairs, pairs, synth_s / pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="a folder of photos (default: 768x576 JPEGs from scikit-image)")
    ap.add_argument("--sources", type=int, default=16)
    ap.add_argument("--tiny-step-s", type=float, default=1.0)
    ap.add_argument("--sd21-samples-per-s", type=float, default=10.3)
    args = ap.parse_args()
    if args.input:
        files = sorted(p for p in args.input.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))[: args.sources]
    else:
        files = sorted(make_corpus(Path(tempfile.mkdtemp(prefix="dd-feed-")), args.sources, size=(768, 576)).iterdir())
    produce(files[:2], 64, 1)  # warm-up
    load0 = os.getloadavg()[0]
    cases = [(64, 1), (64, 16), (512, 1), (512, 4)]
    rows = {case: produce(files, *case) for case in cases}
    print(f"# on-the-fly production, recipe realistic, {len(files)} sources from {args.input or 'scikit-image JPEGs 768x576'}, "
          f"1 thread, thread CPU time; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| crop | crops per source | pairs | decode+crop ms/pair | synthesis ms/pair | pairs/s per core |")
    print("|---|---|---|---|---|---|")
    per_core = {}
    for (crop, cpi), (dec, n, syn) in rows.items():
        per_core[(crop, cpi)] = 1 / (dec + syn)
        print(f"| {crop} | {cpi} | {n} | {dec * 1e3:.2f} | {syn * 1e3:.2f} | {per_core[(crop, cpi)]:.1f} |")
    tiny = 8 / args.tiny_step_s
    print(f"\n| consumer | pairs/s consumed | cores to feed it (1 crop per source) | (16 crops / 4 crops per source) |")
    print("|---|---|---|---|")
    print(f"| tiny, 64², batch 8, {args.tiny_step_s:.2f} s/step | {tiny:.1f} | {tiny / per_core[(64, 1)]:.2f} | {tiny / per_core[(64, 16)]:.2f} |")
    sd = args.sd21_samples_per_s
    print(f"| sd21, 512², one GPU at {sd:.2f} samples/s | {sd:.1f} | {sd / per_core[(512, 1)]:.2f} | {sd / per_core[(512, 4)]:.2f} |")


if __name__ == "__main__":
    main()
