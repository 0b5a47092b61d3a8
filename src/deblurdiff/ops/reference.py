"""Pure-PyTorch reference EAC, written straight from DESIGN §1 "EAC exactly".

Slow and memory-hungry (it materialises every shifted copy); used by tests as the ground truth and
by benchmarks as the ``F.unfold`` baseline. Not the production path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eac_reference(input: torch.Tensor, kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """out[b,c,y,x] = Σ_ij kernel[b, g·k²+i·k+j, y, x] · input[b, c, y+i−p, x+j−p] (zero padding)."""
    b, c, h, w = input.shape
    k = kernel_size
    p = (k - 1) // 2
    groups = kernel.shape[1] // (k * k)
    padded = F.pad(input, (p, p, p, p))
    out = torch.zeros_like(input)
    kern = kernel.view(b, groups, k * k, h, w)
    per_group = c // groups
    for i in range(k):
        for j in range(k):
            shifted = padded[:, :, i:i + h, j:j + w]  # input[y+i−p, x+j−p]
            tap = kern[:, :, i * k + j].repeat_interleave(per_group, dim=1)  # (B, C, H, W)
            out = out + tap * shifted
    return out


def eac_unfold(input: torch.Tensor, kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The common ``F.unfold`` formulation (allocates k²× the input): the benchmark baseline."""
    b, c, h, w = input.shape
    k = kernel_size
    groups = kernel.shape[1] // (k * k)
    cols = F.unfold(input, k, padding=(k - 1) // 2).view(b, groups, c // groups, k * k, h, w)
    return (cols * kernel.view(b, groups, 1, k * k, h, w)).sum(dim=3).view(b, c, h, w)
