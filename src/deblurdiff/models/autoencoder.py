"""The tiny preset's autoencoder: exactly invertible, full resolution, no training.

No pretrained tiny Stable Diffusion exists, and a small VAE trained in minutes would blur the very
detail we want to restore. So the tiny "latent" is the image itself under a fixed orthonormal colour
transform (luma + two opponent-colour axes):

    z = s · M (2x − 1),      x = (Mᵀ z / s + 1) / 2       (M orthonormal, s = scaling_factor)

Why this one:
- Exact: decode(encode(x)) == x up to float rounding, so MSE(ẑ, z_0) measures the LKPN alone.
- Full resolution and one channel per colour axis: EAC applies one kernel per latent channel that reads
  only that channel, and a blur acts on each colour channel alike, so z_b = M·blur(x) = blur(M·x) and
  a k×k kernel can undo blur channel by channel. (A space-to-depth latent would scatter the sub-pixel
  phases of one image over several channels, out of reach of a per-channel kernel.)
- Decorrelated: the luma channel carries most of the detail, chroma little.

Exposes the slice of ``AutoencoderKL``'s API the pipeline uses: ``encode(x).latent_dist`` (a
deterministic ``DiagonalGaussianDistribution``), ``decode(z).sample``, ``config.scaling_factor`` and
``config.downsample_factor`` (1: latents are at image resolution).
"""

from __future__ import annotations

import math

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

__all__ = ["ExactAutoencoder"]


def _opponent_colour_basis() -> torch.Tensor:
    """Rows: luma (1,1,1)/√3, red-green (1,−1,0)/√2, yellow-blue (1,1,−2)/√6. Orthonormal."""
    return torch.tensor(
        [[1 / math.sqrt(3)] * 3,
         [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
         [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)]],
        dtype=torch.float64,
    )


class ExactAutoencoder(ModelMixin, ConfigMixin):
    """Fixed orthonormal colour transform at image resolution (see the module docstring)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = 3, scaling_factor: float = 1.0,
                 downsample_factor: int = 1):
        super().__init__()
        if (in_channels, latent_channels, downsample_factor) != (3, 3, 1):
            raise ValueError("ExactAutoencoder maps RGB to a 3-channel latent at image resolution; got "
                             f"in_channels={in_channels}, latent_channels={latent_channels}, "
                             f"downsample_factor={downsample_factor}")
        # Saved with the weights so a checkpoint states the transform it was trained with.
        self.register_buffer("basis", _opponent_colour_basis().float())  # M: (3 latent, 3 rgb)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x: (B, 3, H, W) in [-1, 1] -> latent_dist over (B, 3, H, W) (unscaled, as AutoencoderKL)."""
        mean = torch.einsum("lc,bchw->blhw", self.basis.to(x.dtype), x)
        # Deterministic: std 0, so .sample() == .mode() == mean.
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """z: (B, 3, H, W) unscaled latent -> (B, 3, H, W) image in [-1, 1] (not clamped)."""
        x = torch.einsum("lc,blhw->bchw", self.basis.to(z.dtype), z)  # Mᵀ z
        return DecoderOutput(sample=x) if return_dict else (x,)
