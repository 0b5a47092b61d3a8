"""Image formation around the blur: camera response, saturation, sensor noise, Bayer, JPEG.

Pure functions on (B, C, H, W) tensors with per-sample parameters as (B,) tensors; random fields
(noise) are passed in, drawn by the caller from the sample's CPU generator, so every device gets the
same draws.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from kornia.color import CFA, rgb_to_raw
from PIL import Image

from deblurdiff.pixels import to_float, to_uint8

__all__ = [
    "to_linear",
    "to_linear_levels",
    "from_linear",
    "boost_highlights",
    "poisson_gaussian_noise",
    "mosaic",
    "demosaic",
    "jpeg",
    "CFA_PATTERNS",
]

CFA_PATTERNS = ("RG", "GR", "BG", "GB")  # kornia.color.CFA names (OpenCV convention)


def _per_sample(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """(B,) or scalar -> (B, 1, 1, 1) on x's device/dtype."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, 1, 1, 1) if v.dim() else v


# ----------------------------------------------------------------------------- camera response
# The sRGB curve is kornia.color's (rgb_to_linear_rgb / linear_rgb_to_rgb, IEC 61966-2-1), written
# here without pow and where: torch's CPU pow with a scalar exponent and where are ~4x slower than
# exp/log and clamp, and the two curves were 40% of a 512² pair's time. The curve is continuous at
# its threshold t (power(t) == linear(t) to 1e-9), so the two pieces can be added on clamped inputs:
# f(x) = power(max(x, t)) + linear(min(x, t)) - linear(t). Tests pin it to kornia's functions.
_SRGB_T, _LIN_T = 0.04045, 0.0031308  # thresholds in display and linear values


def _pow(x: torch.Tensor, exponent: torch.Tensor | float) -> torch.Tensor:
    """x ** exponent for x >= 0 (log(0) = -inf, so 0 maps to 0)."""
    return x.log().mul_(exponent).exp_()


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    # ((max(x, t) + 0.055) / 1.055) ** 2.4 + (min(x, t) - t) / 12.92
    power = x.clamp(min=_SRGB_T).add_(0.055).log_().mul_(2.4).sub_(2.4 * math.log(1.055)).exp_()
    return power.add_(x.clamp(max=_SRGB_T), alpha=1 / 12.92).sub_(_SRGB_T / 12.92)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    # 1.055 * max(x, t) ** (1 / 2.4) - 0.055 + 12.92 * (min(x, t) - t)
    power = x.clamp(min=_LIN_T).log_().mul_(1 / 2.4).add_(math.log(1.055)).exp_()
    return power.add_(x.clamp(max=_LIN_T), alpha=12.92).sub_(0.055 + 12.92 * _LIN_T)


def to_linear(x: torch.Tensor, curve: str = "srgb", gamma: torch.Tensor | float = 2.2) -> torch.Tensor:
    """Display values in [0, 1] -> linear light: the inverse sRGB curve or ``x ** gamma``."""
    if curve == "srgb":
        return _srgb_to_linear(x)
    if curve == "gamma":
        return _pow(x.clamp_min(0), _per_sample(gamma, x))
    raise ValueError(f"to_linear: curve must be 'srgb' or 'gamma', got {curve!r}")


def to_linear_levels(levels: torch.Tensor, curve: str = "srgb", gamma: torch.Tensor | float = 2.2) -> torch.Tensor:
    """``to_linear(to_float(levels))`` for uint8 levels (B, C, H, W), by table: a uint8 image holds at most
    256 values, so the curve runs on those (``to_linear`` itself, per sample's gamma) and each pixel looks
    its value up — the same floats, bit for bit, for ~0.7 ms instead of ~3 ms at 512² (one thread)."""
    b = levels.shape[0]
    grid = to_float(torch.arange(256, dtype=torch.uint8, device=levels.device)).expand(b, 1, 1, 256).contiguous()
    table = to_linear(grid, curve, gamma).reshape(-1)  # (B·256,): sample i's table at [256 i, 256 i + 256)
    if levels.device.type == "cpu" and b == 1:
        # NumPy takes uint8 indices as they are; torch would want an int64 copy of the image first
        return torch.from_numpy(np.take(table.numpy(), levels.numpy()))
    return table.take(levels.long() + (torch.arange(b, device=levels.device) * 256).view(b, 1, 1, 1))


def from_linear(x: torch.Tensor, curve: str = "srgb", gamma: torch.Tensor | float = 2.2) -> torch.Tensor:
    """Linear light in [0, 1] -> display values; exact inverse of ``to_linear``."""
    if curve == "srgb":
        return _linear_to_srgb(x)
    if curve == "gamma":
        return _pow(x.clamp_min(0), 1 / _per_sample(gamma, x))
    raise ValueError(f"from_linear: curve must be 'srgb' or 'gamma', got {curve!r}")


# ----------------------------------------------------------------------------- saturation
def boost_highlights(x: torch.Tensor, threshold: torch.Tensor | float, gain: torch.Tensor | float) -> torch.Tensor:
    """Give clipped highlights their true (brighter than 1) radiance before the blur (RSBlur, Rim et
    al. 2022): a pixel whose brightest channel is at 1 is scaled by ``gain``, one between ``threshold``
    and 1 by a linear ramp between 1 and ``gain``, others are kept. Clip after blurring, so a light
    source smears into the saturated streak a real camera records instead of a dim grey smudge."""
    t = _per_sample(threshold, x)
    peak = x.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    ramp = ((peak - t) / (1 - t).clamp_min(1e-6)).clamp(0, 1)
    return x * (1 + (_per_sample(gain, x) - 1) * ramp)


# ----------------------------------------------------------------------------- sensor noise
def poisson_gaussian_noise(x: torch.Tensor, shot: torch.Tensor | float, read: torch.Tensor | float, eps: torch.Tensor) -> torch.Tensor:
    """``y = x + sqrt(shot * x + read**2) * eps`` (eps ~ N(0, 1), same shape as x).

    The heteroscedastic Gaussian form of the Poisson–Gaussian sensor model (Foi et al. 2008; Brooks
    et al. 2019): variance grows linearly with the signal (slope ``shot``, the photon shot noise) on
    top of a floor ``read**2`` (read noise). Applied in linear light on the (mosaiced) raw signal."""
    std = x.clamp_min(0).mul_(_per_sample(shot, x)).add_(_per_sample(read, x) ** 2).sqrt_()
    return std.mul_(eps.to(x)).add_(x)


# ----------------------------------------------------------------------------- Bayer
def mosaic(x: torch.Tensor, cfa: str) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) Bayer raw with the given CFA pattern (kornia.color.rgb_to_raw)."""
    return rgb_to_raw(x, CFA[cfa])


def demosaic(raw: torch.Tensor, cfa: str) -> torch.Tensor:
    """(B, 1, H, W) Bayer raw -> (B, 3, H, W): kornia's bilinear demosaic (``kornia.color.raw_to_rgb``), its
    numbers bit for bit (tests/blur_synthesis/test_formation.py pins it). Odd sizes are padded by reflection
    to even (what kornia needs) and cropped back.

    Why not call kornia: it interpolates green with a 3x3 ``conv2d``, which CPU torch runs through im2col, a
    9x copy of the image per call: 1.1-6 ms at 512² depending on the allocator's state (oneDNN ~2.5 ms), ~4 ms
    a Bayer pair in the synth actors. Its kernel is the mean of the four neighbours, so here green is the four
    shifted planes added in the kernel's row-major order and scaled by 1/4 (exact in binary): 0.15 ms, the
    same sums. Red and blue follow kornia's steps: pad the colour's samples by one (replicate) on the top/left
    where they sit at odd rows/columns, on the bottom/right where at even ones, upsample bilinearly with the
    corners aligned to H+1 x W+1, cut the pad off."""
    h, w = raw.shape[-2:]
    # reflecting one row/column copies row h-2 into row h: same parity, so the CFA phase stays right
    raw = F.pad(raw, (0, w % 2, 0, h % 2), mode="reflect") if (h % 2 or w % 2) else raw
    red, blue, greens = _CFA_SITES[cfa]
    rgb = raw.new_empty(raw.shape[0], 3, *raw.shape[-2:])
    size = (raw.shape[-2] + 1, raw.shape[-1] + 1)
    for channel, (y, x) in ((0, red), (2, blue)):
        up = F.pad(raw[..., y::2, x::2], (x, 1 - x, y, 1 - y), mode="replicate")
        up = F.interpolate(up, size=size, mode="bilinear", align_corners=True)
        rgb[:, channel : channel + 1] = up[..., y : y + raw.shape[-2], x : x + raw.shape[-1]]
    g = F.pad(raw, (1, 1, 1, 1), mode="reflect")
    green = g[..., :-2, 1:-1].add(g[..., 1:-1, :-2]).add_(g[..., 1:-1, 2:]).add_(g[..., 2:, 1:-1]).mul_(0.25)
    for y, x in greens:  # the sampled greens stay as they are
        green[..., y::2, x::2] = raw[..., y::2, x::2]
    rgb[:, 1:2] = green
    return rgb[..., :h, :w]


# Where each colour is sampled in a 2x2 cell, as (row, column): red, blue, the two greens. OpenCV's CFA
# names, read as kornia.color.raw_to_rgb reads them.
_CFA_SITES = {
    "BG": ((0, 0), (1, 1), ((0, 1), (1, 0))),
    "GB": ((0, 1), (1, 0), ((0, 0), (1, 1))),
    "RG": ((1, 1), (0, 0), ((1, 0), (0, 1))),
    "GR": ((1, 0), (0, 1), ((1, 1), (0, 0))),
}


# ----------------------------------------------------------------------------- JPEG
def jpeg(x: torch.Tensor, quality: list[int] | torch.Tensor) -> torch.Tensor:
    """Round-trip each image through the real JPEG codec (Pillow/libjpeg, 4:2:0 chroma) at its own
    quality; x (B, 3, H, W) in [0, 1] -> decoded values k / 255, same device and dtype; uint8 levels
    -> decoded uint8 levels (what the float form gives, quantised: no float round trip)."""
    quality = [int(q) for q in (quality.tolist() if torch.is_tensor(quality) else quality)]
    levels = x if x.dtype == torch.uint8 else to_uint8(x)
    arrays = levels.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (B, H, W, 3)
    out = []
    for arr, q in zip(arrays, quality):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        out.append(np.array(Image.open(buf)))  # a 3-channel JPEG decodes to RGB (writable copy)
    decoded = torch.from_numpy(out[0][None] if len(out) == 1 else np.stack(out)).permute(0, 3, 1, 2).to(x.device)
    return decoded if x.dtype == torch.uint8 else to_float(decoded, dtype=x.dtype)
