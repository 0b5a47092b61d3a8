"""``deblurdiff eval``: PSNR / SSIM / latent errors of a model on paired data."""

from __future__ import annotations

import argparse

from deblurdiff.model_dir import MODEL_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score a model on paired blurry/sharp data",
        description="Restore paired data (WebDataset shards from `deblurdiff synth`, or folders blur/ + "
                    "sharp/ with matching names) and write PSNR/SSIM/latent-error metrics: a summary JSON "
                    "at --output, a per-image CSV and a contact sheet beside it.")
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--data", required=True, help="shard file/folder, or a folder holding blur/ and sharp/")
    parser.add_argument("--output", required=True, help="summary JSON file to write")
    # Unset: the settings the model was validated with (recorded in its directory), as `deblur` uses.
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--sampler", default=None, help="ddpm (released, 50 steps) or dpmpp (default: the model's)")
    parser.add_argument("--strength", type=float, default=None,
                        help="where sampling starts, in [0, 1] (default: the model's; see deblur --help)")
    parser.add_argument("--seed", type=int, default=0, help="seed of each image's generator")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many pairs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from deblurdiff.model_dir import check_model_dir, load_pipeline
    from deblurdiff.errors import UsageError
    from deblurdiff.evaluation import evaluate, iter_pairs
    from deblurdiff.diffusion import SAMPLERS

    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be at least 1")
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise UsageError(f"--strength {args.strength:g}: must be in [0, 1]")
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UsageError(f"--sampler {args.sampler}: expected one of {', '.join(SAMPLERS)}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1")
    check_model_dir(args.model)
    iter_pairs(args.data)  # rejects a bad --data now, before the model loads
    pipe = load_pipeline(args.model)
    summary = evaluate(pipe, args.data, args.output, steps=args.steps, sampler=args.sampler,
                       strength=args.strength, seed=args.seed, limit=args.limit)
    print(f"eval: {summary['pairs']} pairs ({len(summary['skipped'])} skipped) | {summary['sampler']} "
          f"{summary['steps']} steps strength {summary['strength']:g} | "
          f"PSNR blurry {summary['psnr_blurry']:.2f} dB -> restored {summary['psnr_restored']:.2f} dB | "
          f"SSIM {summary['ssim_blurry']:.3f} -> {summary['ssim_restored']:.3f} | "
          f"latent MSE z_b {summary['blurry_latent_mse']:.4g} -> ẑ {summary['lkpn_latent_mse']:.4g} | "
          f"{args.output}")
    return 0
