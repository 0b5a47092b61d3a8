"""FFT convolution with per-sample PSFs, and spatially varying blur by smooth region masks.

Why not ``kornia.filters.fft_conv``: it transforms at the exact padded length H + K - 1 (often a
large prime factor, which ``torch.fft`` handles slowly) and transforms the kernel once per channel.
Here the transform length is the next 2^a 3^b 5^c number >= H + K - 1, the image spectrum is computed
once and reused for every PSF of the sample, and the kernel spectrum once for all channels. The cost
then depends on H + K, not on K^2: a 127-px kernel costs about what a 15-px one does.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = ["smooth_size", "fft_blur", "region_masks"]


@functools.lru_cache(maxsize=None)
def smooth_size(n: int) -> int:
    """Smallest even m >= n whose only prime factors are 2, 3 and 5 (fast FFT lengths; odd ones
    such as 625 or 675 measured ~1.5x slower than the next even one with torch's CPU FFT)."""
    m = max(2, int(n) + int(n) % 2)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 2


def fft_blur(x: torch.Tensor, psfs: torch.Tensor, masks: torch.Tensor | None = None, border: str = "reflect") -> torch.Tensor:
    """Blur each sample with its PSF(s): ``out = sum_j psfs[:, j] conv (masks[:, j] * x)``.

    Spatially varying blur in the efficient-filter-flow form (Hirsch et al., CVPR 2010): the sharp
    image is split by the smooth masks, each part is blurred by its own PSF (light from a scene
    region spreads by that region's PSF) and the parts are summed. In the frequency domain the sum
    comes before the inverse transform, so n PSFs cost n forward transforms and one inverse.

    Args:
        x: (B, C, H, W) image.
        psfs: (B, n, K, K) PSFs, K odd, centre pixel = origin; true convolution (flipped kernel in
            ``F.conv2d`` terms), as ``scipy.signal.fftconvolve(mode="same")``.
        masks: (B, n, H, W) weights summing to 1 over ``n`` (spatially varying blur), or None when
            n == 1 (spatially uniform blur).
        border: how the image is extended beyond its edge: "reflect" (mirror, default), "replicate" or
            "circular". Reflect needs K // 2 < H, W; smaller images fall back to "replicate".

    Returns:
        (B, C, H, W), same dtype as ``x``.
    """
    if x.dim() != 4 or psfs.dim() != 4 or psfs.shape[0] != x.shape[0] or psfs.shape[-1] != psfs.shape[-2] or psfs.shape[-1] % 2 == 0:
        raise ValueError(f"fft_blur: expected x (B, C, H, W) and psfs (B, n, K, K) with K odd, got {tuple(x.shape)} and {tuple(psfs.shape)}")
    if masks is None and psfs.shape[1] != 1:
        raise ValueError(f"fft_blur: {psfs.shape[1]} PSFs per sample need masks (B, n, H, W)")
    b, c, h, w = x.shape
    n, k = psfs.shape[1], psfs.shape[-1]
    p = k // 2
    mode = "replicate" if border == "reflect" and (p >= h or p >= w) else border
    # Linear convolution by circular convolution of length N >= H + K - 1 (a fast FFT length): the
    # outputs we keep, [K-1, K-1+H), read inputs [0, H+K-1) only and never wrap around. So the image
    # is padded by K//2 on the top/left and by N - H - K//2 (>= K//2) on the bottom/right, straight to
    # the FFT size: the slack beyond K//2 only feeds outputs we drop, and padding once avoids the copy
    # a zero-filled rfft2(s=...) makes.
    nh, nw = smooth_size(h + k - 1), smooth_size(w + k - 1)
    # The PSF has K non-zero rows of nh: transform those rows first, then the columns (half the work
    # of a full rfft2 of the zero-filled kernel). Dividing the PSF by nh * nw lets the inverse skip
    # its normalisation pass (norm="forward"), a measured ~30% of irfft2's time on CPU.
    psfs = psfs.to(x.dtype) / (nh * nw)
    spec_k = torch.fft.fft(torch.fft.rfft(psfs, n=nw, dim=-1), n=nh, dim=-2)  # (B, n, nh, nw//2+1)
    # (pad(m * x) == pad(m) * pad(x): padding is a per-pixel index map, so the masks are padded once)
    padded_masks = None if masks is None else _pad_to(masks.to(x.dtype), p, nh, nw, mode)[:, :, None]
    # On CPU one colour plane at a time: a plane's spectra (~1.6 MB at 512²) stay in cache, three at once
    # (~5 MB) did not — measured one thread, 512², K = 3…127: 5.2–12.8 ms for the three planes together,
    # 5.9–7.6 ms one by one, the same bits. On a GPU all planes go in one call.
    if x.device.type != "cpu" or c == 1:
        return _blur_planes(x, spec_k, padded_masks, p, k, nh, nw, mode)
    # Planes laid out one after the other: a channels-last image (a decoded HWC photo, permuted) padded and
    # transformed plane by plane took ~3 ms more at 512² (9.3–11.6 vs 6.4–8.0 ms, one thread; the same bits).
    x = x.contiguous()
    out = x.new_empty(b, c, h, w)
    for i in range(c):
        out[:, i : i + 1] = _blur_planes(x[:, i : i + 1], spec_k, padded_masks, p, k, nh, nw, mode)
    return out


def _blur_planes(x: torch.Tensor, spec_k: torch.Tensor, padded_masks: torch.Tensor | None, p: int, k: int,
                 nh: int, nw: int, mode: str) -> torch.Tensor:
    """``fft_blur`` of x (B, c, H, W) given the PSF spectra (B, n, nh, nw//2+1) and the padded masks
    (B, n, 1, nh, nw) or None; returns (B, c, H, W)."""
    h, w = x.shape[-2:]
    xp = _pad_to(x, p, nh, nw, mode)  # (B, c, nh, nw), padded straight to the FFT size (see fft_blur)
    if padded_masks is not None:  # the masked parts m_j * x
        xp = padded_masks * xp[:, None]  # (B, n, c, nh, nw)
    spec_x = torch.fft.rfft2(xp)  # (B, c, nh, nw//2+1) or (B, n, c, nh, nw//2+1)
    if padded_masks is None:
        spec = spec_x.mul_(spec_k)  # (B, c, nh, nw//2+1), in place: spec_x is not needed again
    else:  # sum_j X_j K_j, accumulated in place (no (B, n, c, ...) temporary)
        spec = spec_x[:, 0] * spec_k[:, 0, None]
        for j in range(1, spec_k.shape[1]):
            spec.addcmul_(spec_x[:, j], spec_k[:, j, None])
    # The inverse in two passes, columns then rows, so the second runs on the H kept rows only: the numbers
    # of irfft2 (the 2-D transform is these two passes; equal bit for bit with MKL here), ~30% faster for a
    # 127-px PSF on 512², where nh - H is a fifth of nh.
    y = torch.fft.ifft(spec, dim=-2, norm="forward")[..., k - 1 : k - 1 + h, :]  # (B, c, H, nw//2+1)
    return torch.fft.irfft(y, n=nw, dim=-1, norm="forward")[..., k - 1 : k - 1 + w]  # (B, c, H, W)


def _pad_to(x: torch.Tensor, p: int, nh: int, nw: int, mode: str) -> torch.Tensor:
    """Pad (..., H, W) by ``p`` on the top/left and up to (nh, nw) on the bottom/right with ``mode``
    (the first ``p`` beyond the edge follow ``mode``; what lies further only feeds dropped outputs)."""
    h, w = x.shape[-2:]
    bottom, right = nh - h - p, nw - w - p
    lead = x.shape[:-2]
    x = x.reshape(-1, 1, h, w) if x.dim() != 4 else x  # F.pad's reflect/replicate want 3-D/4-D input
    if mode in ("reflect", "circular") and (bottom >= h or right >= w):  # too far for one pad
        out = F.pad(F.pad(x, (p, p, p, p), mode=mode), (0, right - p, 0, bottom - p))
    else:
        out = F.pad(x, (p, right, p, bottom), mode=mode)
    return out.reshape(*lead, nh, nw)


def region_masks(centres: torch.Tensor, softness: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Smooth partition of the image into soft Voronoi regions.

    Args:
        centres: (B, n, 2) region centres (x, y) in [0, 1] image coordinates.
        softness: (B,) transition width as a fraction of the image's longer side.
    Returns:
        (B, n, H, W) masks, non-negative, summing to 1 at every pixel:
        ``softmax_j(-|p - c_j| / softness)``, p in units of the longer side. Between two regions the
        mask is a sigmoid of (d_2 - d_1) / softness, whose gradient is at most 2 / softness: a seam
        about ``softness`` wide, never a hard edge.
    """
    scale = max(height, width)
    ys = (torch.arange(height, dtype=torch.float32, device=centres.device) + 0.5) / scale
    xs = (torch.arange(width, dtype=torch.float32, device=centres.device) + 0.5) / scale
    inv = 1 / softness.float().to(centres.device)[:, None, None, None]
    cx = centres[..., 0, None, None].float() * (width / scale)  # (B, n, 1, 1)
    cy = centres[..., 1, None, None].float() * (height / scale)
    dist = torch.hypot(xs[None, None, None, :] - cx, ys[None, None, :, None] - cy)  # (B, n, H, W)
    return torch.softmax(dist.mul_(-inv), dim=1)
