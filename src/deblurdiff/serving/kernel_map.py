"""Kernel-spread map: where, and how widely, the LKPN's predicted kernels spread (web page overlay).

The LKPN predicts a residual kernel K per latent pixel (ẑ = EAC(z_b, K) + z_b), so the kernel that
acts on z_b is ``δ + K`` (identity plus K). Its spread at a pixel is the RMS tap distance weighted by
the taps' absolute weights, averaged over channels:

    spread(y, x) = sqrt( Σ_c Σ_{i,j} |δ + K|[c, i, j, y, x] · ((i - p)² + (j - p)²) / Σ_c Σ_{i,j} |δ + K| )

0 where the LKPN leaves z_b alone; up to p·√2 (latent pixels) where it spreads over the whole k x k.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kernel_spread", "spread_to_rgb"]


def kernel_spread(kernels, kernel_size: int):
    """kernels: (B, C·k², h, w) tensor (EAC layout, tap r = i·k + j) -> (B, h, w) float32 numpy."""
    import torch

    b, ck2, h, w = kernels.shape
    k = kernel_size
    p = (k - 1) // 2
    taps = kernels.detach().float().reshape(b, ck2 // (k * k), k * k, h, w)  # (B, C, k², h, w)
    taps = taps.clone()
    taps[:, :, p * k + p] += 1.0  # δ + K: the identity the residual add contributes
    i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    dist2 = ((i - p) ** 2 + (j - p) ** 2).reshape(1, 1, k * k, 1, 1).to(taps)
    weight = taps.abs()
    spread = ((weight * dist2).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1e-8)).sqrt()
    return spread.cpu().numpy().astype(np.float32)


# A perceptually ordered dark-blue -> teal -> yellow ramp (viridis-like), 5 anchors.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def spread_to_rgb(spread: np.ndarray, width: int, height: int, vmax: float) -> np.ndarray:
    """(h, w) spread in latent pixels -> (height, width, 3) uint8 colour map scaled to [0, vmax]."""
    from PIL import Image

    t = np.clip(spread / max(vmax, 1e-8), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    frac = (t - lo)[..., None]
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    img = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    if img.size != (width, height):  # latent resolution -> image resolution (sd21: 8x)
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img)
