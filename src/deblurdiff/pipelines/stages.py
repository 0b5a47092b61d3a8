"""The per-sample steps, shared by the shard writer (``synth``) and the training stream.

    bytes --decode_crops--> sharp crops (n, c, c, 3) uint8
          --synthesize_crops--> blurry crops (n, c, c, 3) uint8 + PSFs + drawn params
          --encode_sample--> WebDataset members {sharp.png, blur.png, kernel.npy, meta.json}

Everything is a pure function of (bytes, settings, seed) so any worker, in any batch, makes the
same bytes. The blurry image is quantised to 8 bits in both paths (it is an 8-bit image on disk),
so on-the-fly training data equals the pre-generated shards.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from deblurdiff.imageio import ImageDecodeError, decode_rgb, encode_image
from deblurdiff.pipelines.plan import crop_box, sample_seed
from deblurdiff.pixels import to_float, to_uint8

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


def decode_crops(data: bytes, source_key: str, crop_indices: list[int], crop: int, seed: int) -> list[Crop]:
    """Decode one source and cut its crops. Raises ImageDecodeError (the reason) when the bytes are
    not an image or the image is smaller than the crop."""
    image = decode_rgb(data, max_pixels=MAX_PIXELS)  # (H, W, 3) uint8, EXIF applied
    height, width = image.shape[:2]
    if height < crop or width < crop:
        raise ImageDecodeError(f"smaller than the crop: {width}x{height} < {crop}x{crop}")
    crops = []
    for c in crop_indices:
        top, left = crop_box(seed, source_key, c, height, width, crop)
        pixels = np.ascontiguousarray(image[top : top + crop, left : left + crop])
        crops.append(Crop(c, top, left, pixels, (height, width)))
    return crops


def synthesize_crops(sharp_u8: np.ndarray, seeds: list[int], recipe, device: str = "cpu"):
    """Blur a batch of sharp crops with ``recipe``.

    sharp_u8: (n, c, c, 3) uint8. Returns ``(blurry_u8 (n, c, c, 3), kernels [(n_psf, K, K) float32],
    params [dict])`` — the kernels and params are those the recipe drew and applied.
    """
    import torch

    from deblurdiff.blur_synthesis import kernels_to_array, synthesize

    if not sharp_u8.flags.writeable:  # zero-copy Ray Data batches are read-only; torch wants to own
        sharp_u8 = sharp_u8.copy()
    sharp = to_float(torch.from_numpy(np.ascontiguousarray(sharp_u8)).permute(0, 3, 1, 2)).to(device)  # (n, 3, c, c)
    out = synthesize(sharp, recipe, seeds=seeds)
    blurry_u8 = to_uint8(out.blurry).permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (n, c, c, 3)
    return blurry_u8, [kernels_to_array(k) for k in out.kernels], out.params


def blur_seeds(seed: int, source_key: str, crop_indices: list[int]) -> list[int]:
    return [sample_seed(seed, source_key, c, "blur") for c in crop_indices]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


# PNG encoding was 55-76 % of the synthesis actors' CPU at level 6; level 1 is ~4x faster for ~10 %
# more bytes, and just as lossless and deterministic.
SHARD_PNG_LEVEL = 1


def encode_sample(sharp_u8: np.ndarray, blurry_u8: np.ndarray, kernel: np.ndarray, meta: dict) -> dict[str, bytes]:
    """The WebDataset members of one sample (DESIGN §3). PNG at a fixed compression level and
    key-sorted JSON, so equal inputs give equal bytes."""
    return {
        "blur.png": encode_image(blurry_u8, "png", compress_level=SHARD_PNG_LEVEL),
        "kernel.npy": _npy_bytes(kernel),
        "meta.json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
        "sharp.png": encode_image(sharp_u8, "png", compress_level=SHARD_PNG_LEVEL),
    }
