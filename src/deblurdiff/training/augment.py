"""Training-time augmentation of (sharp, blurry) pairs: the eight flips and quarter turns (the dihedral
group D4), one per pair, drawn from the rank's training generator.

A turned or mirrored pair is another realistic pair: its blur kernel turns with it (camera shake has
no preferred direction) and the noise stays the same per-pixel noise. Eight views of every crop give a
small corpus (the tiny preset's few photos) eight times the variety at no synthesis cost; what a small
model overfits on such a corpus is orientation-specific detail. The same transform is applied to both
images of a pair, so the pair stays aligned.
"""

from __future__ import annotations

import torch

__all__ = ["dihedral_pairs"]


def dihedral_pairs(sharp: torch.Tensor, blurry: torch.Tensor, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """sharp, blurry: (B, C, H, W), H == W. Returns both with pair i turned by a random multiple of 90°
    and, at random, mirrored left-right; the draws (2 per batch) come from ``generator``."""
    if sharp.shape[-1] != sharp.shape[-2]:
        raise ValueError(f"dihedral augmentation needs square crops, got {tuple(sharp.shape[-2:])}")
    n = sharp.shape[0]
    turns = torch.randint(0, 4, (n,), generator=generator).tolist()
    mirror = torch.randint(0, 2, (n,), generator=generator).tolist()

    def view(images: torch.Tensor) -> torch.Tensor:
        out = [torch.rot90(img, k, dims=(-2, -1)) for img, k in zip(images, turns)]
        return torch.stack([img.flip(-1) if m else img for img, m in zip(out, mirror)])

    return view(sharp), view(blurry)
