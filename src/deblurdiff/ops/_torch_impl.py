"""Pure-PyTorch EAC kernels: the fallback when the compiled ones cannot be built.

Shift-and-accumulate over the k² taps, in place on the overlapping region of each tap, so the only
temporaries are one input-sized product per tap (never the k²×input of ``F.unfold``). Half types
accumulate in float32. Same signatures as the compiled kernels of ``deblurdiff::eac*`` (``csrc/``).
"""

from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _taps(k: int, h: int, w: int):
    """Yield (t, out_y, out_x, src_y, src_x): tap t = i·k+j reads input (y+i−p, x+j−p); the slices
    are where that read stays inside the image (zero padding elsewhere)."""
    p = (k - 1) // 2
    for i in range(k):
        for j in range(k):
            dy, dx = i - p, j - p
            y0, y1 = max(0, -dy), min(h, h - dy)
            x0, x1 = max(0, -dx), min(w, w - dx)
            if y0 < y1 and x0 < x1:
                yield (i * k + j, slice(y0, y1), slice(x0, x1),
                       slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx))


def forward(input: torch.Tensor, kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    b, c, h, w = input.shape
    k = kernel_size
    g = kernel.shape[1] // (k * k)
    x = input.view(b, g, c // g, h, w) if input.is_contiguous() else input.reshape(b, g, c // g, h, w)
    kern = kernel.reshape(b, g, k * k, 1, h, w)  # tap t broadcasts over the channels of its group
    out = torch.zeros(b, g, c // g, h, w, dtype=_acc_dtype(input.dtype), device=input.device)
    for t, oy, ox, sy, sx in _taps(k, h, w):
        out[..., oy, ox].addcmul_(kern[:, :, t, :, oy, ox], x[..., sy, sx])
    return out.view(b, c, h, w).to(input.dtype)


def grad_input(grad_out: torch.Tensor, kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """d input[y', x'] = Σ_t K[t, y'−i+p, x'−j+p] · d out[y'−i+p, x'−j+p]: the adjoint shift."""
    b, c, h, w = grad_out.shape
    k = kernel_size
    g = kernel.shape[1] // (k * k)
    d = grad_out.reshape(b, g, c // g, h, w)
    kern = kernel.reshape(b, g, k * k, 1, h, w)
    gi = torch.zeros(b, g, c // g, h, w, dtype=_acc_dtype(grad_out.dtype), device=grad_out.device)
    for t, oy, ox, sy, sx in _taps(k, h, w):
        gi[..., sy, sx].addcmul_(kern[:, :, t, :, oy, ox], d[..., oy, ox])
    return gi.view(b, c, h, w).to(grad_out.dtype)


def grad_kernel(grad_out: torch.Tensor, input: torch.Tensor, kernel_size: int, groups: int) -> torch.Tensor:
    """d K[g, t, y, x] = Σ_{c in g} d out[c, y, x] · input[c, y+i−p, x+j−p]."""
    b, c, h, w = input.shape
    k = kernel_size
    acc = _acc_dtype(input.dtype)
    d = grad_out.reshape(b, groups, c // groups, h, w)
    x = input.reshape(b, groups, c // groups, h, w)
    gk = torch.zeros(b, groups, k * k, h, w, dtype=input.dtype, device=input.device)
    for t, oy, ox, sy, sx in _taps(k, h, w):
        prod = d[..., oy, ox].to(acc) * x[..., sy, sx].to(acc)  # (B, G, C/G, h', w')
        gk[:, :, t, oy, ox] = prod.sum(dim=2)
    return gk.view(b, groups * k * k, h, w)
