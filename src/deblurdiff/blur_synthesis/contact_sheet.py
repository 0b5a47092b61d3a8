"""Contact sheet: one row per sample — sharp | blurry | PSF(s) — to look at what a recipe makes.

    python -m deblurdiff.blur_synthesis.contact_sheet --recipe realistic --rows 6 --size 256 \\
        --output blur_contact_sheet.png
    # the README's picture (docs/images/blur_contact_sheet.png):
    python -m deblurdiff.blur_synthesis.contact_sheet --seeds 0 7 1 9 5 8 --size 224 --palette \\
        --output docs/images/blur_contact_sheet.png

Sharp images are crops of scikit-image's bundled photos (or ``--input`` files). Each PSF is shown
on a black square, scaled to its peak and enlarged with nearest-neighbour so single pixels show;
spatially varying samples show every PSF side by side, and a caption lists the drawn stages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from deblurdiff.blur_synthesis.kernels import kernels_to_array
from deblurdiff.blur_synthesis.params import SampleParams
from deblurdiff.blur_synthesis.synthesis import synthesize
from deblurdiff.files import atomic_write
from deblurdiff.pixels import to_float, to_uint8

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _photos(size: int, picks: list[int], inputs: list[str]) -> torch.Tensor:
    """(len(picks), 3, size, size) centre crops (resized so the short side is ``size``) of the
    photos ``picks[i] % n_photos``."""
    if inputs:
        from deblurdiff.imageio import read_rgb

        arrays = [read_rgb(p) for p in inputs]
    else:
        from skimage import data

        arrays = [getattr(data, name)() for name in _PHOTOS if hasattr(data, name)]
        arrays = [a if a.ndim == 3 else np.stack([a] * 3, -1) for a in arrays]
    crops = []
    for i in picks:
        im = Image.fromarray(np.ascontiguousarray(arrays[i % len(arrays)][..., :3]))
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        crops.append(np.asarray(im.crop((left, top, left + size, top + size))))
    return to_float(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))


def _caption(record: dict) -> str:
    params = SampleParams.from_dict(record)
    psfs = ", ".join(
        f"{p['family']} {p.get('size') or round(p.get('length', 0) or p.get('radius', 0) or p.get('sigma_x', 0), 1)}"
        for p in params.blur.psfs
    )
    stages = [name for name in ("linear_light", "saturation", "bayer", "noise") if getattr(params, name).applied]
    if params.jpeg.applied:
        stages.append(f"jpeg q{params.jpeg.quality}")
    return f"seed {params.seed}: {psfs} | " + ", ".join(stages)


def _kernel_tile(kernels: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 tile with the sample's PSFs side by side, each scaled to its peak."""
    n = len(kernels)
    tile = np.zeros((size, size, 3), np.uint8)
    cell = size // n
    for j, k in enumerate(kernels):
        img = Image.fromarray(to_uint8(k / max(k.max(), 1e-12))).resize((cell, cell), Image.NEAREST)
        y0 = (size - cell) // 2
        tile[y0 : y0 + cell, j * cell : (j + 1) * cell] = np.asarray(img)[..., None]
    return tile


def make_sheet(recipe: str, seeds: list[int], size: int, inputs: list[str] | None = None) -> Image.Image:
    """One row per seed; row i shows photo ``seeds[i] % n_photos`` (a seed always gets the same photo)."""
    rows = len(seeds)
    sharp = _photos(size, seeds, inputs or [])
    out = synthesize(sharp, recipe, seeds=seeds)
    pad, text_h = 4, 14
    sheet = Image.new("RGB", (3 * size + 4 * pad, rows * (size + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    to_u8 = lambda t: to_uint8(t).permute(1, 2, 0).numpy()  # noqa: E731 - (3, H, W) -> (H, W, 3)
    for i in range(rows):
        y = pad + i * (size + text_h + pad)
        draw.text((pad, y), _caption(out.params[i]), fill=(0, 0, 0))
        tiles = (to_u8(sharp[i]), to_u8(out.blurry[i]), _kernel_tile(kernels_to_array(out.kernels[i]), size))
        for j, tile in enumerate(tiles):
            sheet.paste(Image.fromarray(tile), (pad + j * (size + pad), y + text_h))
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deblurdiff.blur_synthesis.contact_sheet", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="realistic", help="built-in name or YAML path (default: realistic)")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--size", type=int, default=256, help="crop side in px")
    ap.add_argument("--seed", type=int, default=0, help="row i uses seed + i")
    ap.add_argument("--seeds", type=int, nargs="+", help="explicit seeds, one row each (overrides --seed/--rows)")
    ap.add_argument("--input", nargs="*", default=[], help="image files (default: scikit-image photos)")
    ap.add_argument("--output", default="blur_contact_sheet.png")
    ap.add_argument("--palette", action="store_true", help="256-colour PNG (a few times smaller, for docs)")
    args = ap.parse_args(argv)
    from deblurdiff.errors import UsageError

    try:
        sheet = make_sheet(args.recipe, args.seeds or [args.seed + i for i in range(args.rows)], args.size, args.input)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    if args.palette:
        sheet = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
