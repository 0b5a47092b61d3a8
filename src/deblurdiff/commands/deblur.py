"""``deblurdiff deblur INPUT... --model DIR --output DIR``: deblur image files or folders.

Writes ``OUTPUT/<input stem>.png`` at each input's size. Unreadable inputs are reported and skipped;
exit 2 when none could be read or ``--model`` is not a pipeline directory.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deblurdiff.errors import UsageError
from deblurdiff.model_dir import MODEL_HELP

logger = logging.getLogger(__name__)

# Kept in step with deblurdiff.diffusion.SAMPLERS (imported lazily: --help must not import torch);
# tests/commands/test_deblur.py checks they match.
SAMPLER_CHOICES = ("ddpm", "dpmpp")


def register(subparsers) -> None:
    p = subparsers.add_parser("deblur", help="deblur images with a trained pipeline",
                              description="Deblur image files (or every image in the given folders).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--output", required=True, metavar="DIR", help="where to write <name>.png")
    # Unset --steps/--sampler/--strength: the settings the model was validated with (recorded in its
    # directory: model_index.json "sampling"), else the released 50-step DDPM from noise.
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's validated steps; 50 for the released model)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="ddpm (released) or dpmpp (DPM-Solver++, fast) (default: the model's validated sampler)")
    p.add_argument("--strength", type=float, default=None,
                   help="where sampling starts, in [0, 1]: 1 from pure noise, lower from the noised blurry "
                        "latent, running only that fraction of the steps; 0: the LKPN's estimate decoded, no step (default: the model's validated "
                        "strength; 1 for the released model)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output (default 0)")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="latent tiling with N-pixel tiles (stride N/2) for large images")
    p.add_argument("--release-compat", action="store_true",
                   help="post-process exactly as the released DeblurDiff: zero padding, colour fix before the "
                        "clamp, truncating quantisation (docs/released-model.md)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders expanded to their image files (sorted, not recursive).
    Returns (candidate files, [(path, reason)] for inputs that do not exist or hold no images)."""
    from deblurdiff.imageio import is_image_path

    files, skipped = [], []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_path(p))
            if not found:
                skipped.append((raw, "folder holds no image files"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            skipped.append((raw, "no such file or folder"))
    return files, skipped


def run(args: argparse.Namespace) -> int:
    from deblurdiff.diffusion import check_sampling
    from deblurdiff.model_dir import check_model_dir, load_pipeline

    check_model_dir(args.model)
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise UsageError(f"--strength must be in [0, 1], got {args.strength:g}")
    files, skipped = collect_inputs(args.inputs)

    import torch
    from tqdm import tqdm

    from deblurdiff.imageio import ImageDecodeError, encode_image, read_rgb
    from deblurdiff.files import atomic_write_bytes
    from deblurdiff.pixels import to_uint8

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = load_pipeline(args.model, device=str(device))
    if args.tile is not None and (args.tile <= 0 or args.tile % pipe.pad_multiple):
        raise UsageError(f"--tile must be a positive multiple of {pipe.pad_multiple}, got {args.tile}")
    sampling = {**pipe.default_sampling(),
                **{k: v for k, v in (("sampler", args.sampler), ("steps", args.steps), ("strength", args.strength))
                   if v is not None}}
    try:
        check_sampling(sampling)
    except ValueError as exc:
        raise UsageError(f"--steps/--strength: {exc}") from None
    pipe.set_progress_bar_config(disable=True)  # one bar over images, not one per image
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    written, seen = 0, set()
    for path in tqdm(files, desc="deblur", unit="img", file=sys.stderr):
        if path.stem in seen:
            skipped.append((str(path), f"another input already writes {path.stem}.png"))
            continue
        try:
            rgb = read_rgb(path)
        except ImageDecodeError as exc:
            skipped.append((str(path), str(exc)))
            continue
        seen.add(path.stem)
        generator = torch.Generator(device).manual_seed(args.seed)  # per image: independent of order
        image = pipe(rgb, num_inference_steps=sampling["steps"], sampler=sampling["sampler"],
                     strength=sampling["strength"], generator=generator, tile_size=args.tile,
                     output_type="np", release_compat=args.release_compat).images[0]
        atomic_write_bytes(out_dir / f"{path.stem}.png",
                           encode_image(to_uint8(image, truncate=args.release_compat)))
        written += 1

    for path, reason in skipped:
        print(f"deblurdiff deblur: skipped {path}: {reason}", file=sys.stderr)
    if written == 0:
        raise UsageError(f"no readable input images among {len(args.inputs)} input(s) "
                         f"({len(skipped)} skipped, see above)")
    print(f"deblurred {written} image(s) into {out_dir} ({sampling['sampler']}, {sampling['steps']} steps, "
          f"strength {sampling['strength']:g})" + (f"; skipped {len(skipped)}" if skipped else ""))
    return 0
