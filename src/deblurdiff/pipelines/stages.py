"""The per-sample steps, shared by the shard writer (``synth``) and the training stream.

    bytes --decode_crops--> sharp crops (n, c, c, 3) uint8
          --synthesize_crops--> blurry crops (n, c, c, 3) uint8 + PSFs + drawn params
          --encode_sample--> WebDataset members {sharp.png, blur.png, kernel.npy, meta.json} (shard_format)

Everything is a pure function of (bytes, settings, seed) so any worker, in any batch, makes the
same bytes. The blurry image is quantised to 8 bits in both paths (it is an 8-bit image on disk),
so on-the-fly training data equals the pre-generated shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from deblurdiff.imageio import ImageDecodeError, decode_rgb
from deblurdiff.pipelines.plan import crop_box, sample_seed
from deblurdiff.pipelines.shard_format import encode_sample  # the writer of one sample (the last step)

__all__ = ["Crop", "decode_crops", "synthesize_crops", "encode_sample"]

# Decompression-bomb guard for inputs: larger images are skipped with this reason, not decoded.
MAX_PIXELS = 178_956_970  # Pillow's own default limit


@dataclass
class Crop:
    """One sharp crop and where it came from (for meta.json)."""

    crop_index: int
    top: int
    left: int
    pixels: np.ndarray  # (c, c, 3) uint8
    source_size: tuple[int, int]  # (height, width) after EXIF orientation


def decode_crops(data: bytes, source_key: str, crop_indices: list[int], crop: int, seed: int,
                 scale_range: tuple[float, float] = (1.0, 1.0)) -> list[Crop]:
    """Decode one source and cut its crops. Raises ImageDecodeError (the reason) when the bytes are
    not an image or the image is smaller than the crop.

    ``scale_range`` (lo, hi), 0 < lo <= hi <= 1: each crop is the photo seen at a scale s drawn uniformly
    from it (seeded by seed, source and crop index): a ``crop / s`` px window resized to ``crop`` px
    (Lanczos), as if the photo had been taken or stored smaller. (1, 1): plain crops, no draw.
    """
    image = decode_rgb(data, max_pixels=MAX_PIXELS)  # (H, W, 3) uint8, EXIF applied
    height, width = image.shape[:2]
    if height < crop or width < crop:
        raise ImageDecodeError(f"smaller than the crop: {width}x{height} < {crop}x{crop}")
    crops = []
    for c in crop_indices:
        window = _window_side(seed, source_key, c, crop, scale_range, min(height, width))
        top, left = crop_box(seed, source_key, c, height, width, window)
        pixels = np.ascontiguousarray(image[top : top + window, left : left + window])
        if window != crop:
            pixels = np.asarray(Image.fromarray(pixels).resize((crop, crop), Image.LANCZOS))
        crops.append(Crop(c, top, left, pixels, (height, width)))
    return crops


def _window_side(seed: int, source_key: str, crop_index: int, crop: int, scale_range: tuple[float, float],
                 shortest_side: int) -> int:
    """The side of the source window that becomes one crop: ``crop`` at scale 1, ``crop / s`` at a scale s
    drawn from ``scale_range`` (capped by the photo's shortest side)."""
    lo, hi = scale_range
    if (lo, hi) == (1.0, 1.0):
        return crop
    scale = np.random.default_rng(sample_seed(seed, source_key, crop_index, "scale")).uniform(lo, hi)
    return min(shortest_side, round(crop / scale))


def synthesize_crops(sharp_u8: np.ndarray, seeds: list[int], recipe, device: str = "cpu"):
    """Blur a batch of sharp crops with ``recipe``.

    sharp_u8: (n, c, c, 3) uint8. Returns ``(blurry_u8 (n, c, c, 3), kernels [(n_psf, K, K) float32],
    params [dict])`` — the kernels and params are those the recipe drew and applied.

    On CPU the crops go through ``synthesize`` one at a time: each sample is computed on its own there
    anyway (same bits whatever the batch), and batch-sized float tensors (n × 3 MB at 512²) are fresh
    memory whose page faults cost more than the arithmetic (measured: quantising a batch of 16 took
    7.7 ms a crop, one crop alone 1.3 ms). On a GPU the whole batch goes in one call (batched there).
    """
    import torch

    from deblurdiff.blur_synthesis import kernels_to_array, synthesize

    if not sharp_u8.flags.writeable:  # zero-copy Ray Data batches are read-only; torch wants to own
        sharp_u8 = sharp_u8.copy()
    sharp = torch.from_numpy(np.ascontiguousarray(sharp_u8)).permute(0, 3, 1, 2)  # (n, 3, c, c) uint8
    chunks = [slice(i, i + 1) for i in range(len(seeds))] if device == "cpu" else [slice(0, len(seeds))]
    blurry_u8 = np.empty_like(sharp_u8)
    kernels, params = [], []
    for part in chunks:  # uint8 in, uint8 out (synthesize's levels form: less work, the same bits)
        out = synthesize(sharp[part].to(device), recipe, seeds=seeds[part])
        blurry_u8[part] = out.blurry.permute(0, 2, 3, 1).cpu().numpy()  # (n, c, c, 3)
        kernels += [kernels_to_array(k) for k in out.kernels]
        params += out.params
    return blurry_u8, kernels, params


def blur_seeds(seed: int, source_key: str, crop_indices: list[int]) -> list[int]:
    return [sample_seed(seed, source_key, c, "blur") for c in crop_indices]
