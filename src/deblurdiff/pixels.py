"""uint8 <-> float pixel values: the one place that decides how images are quantised.

Both functions keep the layout (HWC or CHW, batched or not) and the kind (numpy array or torch
tensor) of what they are given; moving the channel axis stays with the caller. torch is never
imported here, so the CLI's ``--help`` stays free of it.

Rounding is to the nearest level, ties to even (``numpy.rint`` / ``torch.round``), so
``to_uint8(to_float(u8)) == u8`` exactly. (The released DeblurDiff quantises its outputs by
truncation, DESIGN §1; the project rounds everywhere.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_float", "to_uint8"]


def to_float(pixels, dtype=None):
    """uint8 array or tensor -> float values ``k / 255`` in [0, 1], same kind and layout.

    ``dtype``: the float type of the result (a numpy dtype for arrays, a torch dtype for tensors);
    float32 by default.
    """
    if isinstance(pixels, np.ndarray):
        if pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
        float_type = np.dtype(dtype or np.float32).type
        return pixels.astype(float_type) / float_type(255)
    import torch

    if pixels.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.to(dtype or torch.float32).div_(255)


def to_uint8(values, truncate: bool = False):
    """float array or tensor in [0, 1] -> uint8 of the same kind and layout (clamped, then rounded;
    ``truncate=True``: rounded down, as the released DeblurDiff quantises)."""
    if isinstance(values, np.ndarray):
        scaled = np.clip(values, 0, 1) * 255
        return (np.floor(scaled) if truncate else np.rint(scaled)).astype(np.uint8)
    import torch

    scaled = values.detach().clamp(0, 1).mul_(255)  # clamp makes the one copy; the rest is in place
    return (scaled.floor_() if truncate else scaled.round_()).to(torch.uint8)
