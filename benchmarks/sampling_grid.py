"""PSNR / SSIM of a trained model over a grid of sampler settings, on a validation split.

    python benchmarks/sampling_grid.py MODEL_DIR VAL_SHARDS [--held-out SHARDS]

Prints one row per (sampler, steps, strength) with the blurry input's PSNR / SSIM beside it; this is
how the demo's recorded sampling settings were chosen (``deblurdiff.evaluation.score_sampling``).
``--held-out`` scores the best validation setting once on held-out pairs (report that, never tune on it).
"""

from __future__ import annotations

import argparse

import torch

from deblurdiff.evaluation import choose_sampling, score_sampling
from deblurdiff.model_dir import load_pipeline

GRID = [
    {"sampler": "dpmpp", "steps": 10, "strength": 1.0},
    {"sampler": "dpmpp", "steps": 10, "strength": 0.5},
    {"sampler": "dpmpp", "steps": 10, "strength": 0.3},
    {"sampler": "dpmpp", "steps": 10, "strength": 0.2},
    {"sampler": "dpmpp", "steps": 10, "strength": 0.1},
    {"sampler": "dpmpp", "steps": 1, "strength": 1.0},
    {"sampler": "dpmpp", "steps": 2, "strength": 1.0},
    {"sampler": "dpmpp", "steps": 4, "strength": 1.0},
    {"sampler": "ddpm", "steps": 50, "strength": 1.0},
]


def _table(rows: list[dict]) -> str:
    lines = ["| sampler | steps | strength | PSNR blurry | PSNR restored | SSIM blurry | SSIM restored | s/image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['strength']:g} | {r['psnr_blurry']:.2f} | "
                     f"{r['psnr_restored']:.2f} | {r['ssim_blurry']:.3f} | {r['ssim_restored']:.3f} | "
                     f"{r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("validation")
    parser.add_argument("--held-out", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    rows = score_sampling(pipe, args.validation, GRID)
    print(f"validation ({args.validation}):\n" + _table(rows))
    best = choose_sampling(rows)
    print("best on validation:", best)
    if args.held_out:
        print(f"held-out ({args.held_out}), best validation setting only:\n"
              + _table(score_sampling(pipe, args.held_out, [best])))


if __name__ == "__main__":
    main()
