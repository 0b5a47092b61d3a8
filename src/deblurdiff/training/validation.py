"""Validation on held-out pairs: the training objective at fixed timesteps, a full restoration, a grid.

Metrics (all on the held-out pairs, deterministic for a given seed):

- ``val/latent_mse`` = MSE(ẑ, z_0) averaged over fixed timesteps, beside ``val/blurry_latent_mse`` =
  MSE(z_b, z_0): the LKPN has learned something useful once the first is below the second;
- ``val/loss``, ``val/diffusion_loss``: the co-training loss terms (``models.training_step``) at the same
  timesteps and noise (``diffusion_loss`` is the v-MSE for v-prediction presets);
- ``val/psnr_restored`` vs ``val/psnr_blurry``: the pipeline's output against the sharp image;
  ``val/psnr_z_hat``: the last step's ẑ decoded (no colour fix), what strength 0 would give.

The grid has one row per pair: blurry | decoded ẑ (last sampling step) | restored | sharp.
"""

from __future__ import annotations

import numpy as np
import torch

from deblurdiff.evaluation import psnr
from deblurdiff.models import fixed_timestep_losses
from deblurdiff.pixels import to_uint8

__all__ = ["validate_pairs"]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return to_uint8(x.permute(1, 2, 0).cpu()).numpy()


@torch.no_grad()
def validate_pairs(pipe, sharp: torch.Tensor, blurry: torch.Tensor, *, steps: int, seed: int, bf16: bool = False,
                   latent_weight: float = 1.0, strength: float = 1.0) -> tuple[dict[str, float], np.ndarray]:
    """sharp, blurry: (N, 3, H, W) float in [0, 1]. Returns (metrics, grid (N·H, 4·W, 3) uint8).

    ``strength``: where the restoration starts (1: pure noise; below: img2img from ẑ), the most a
    model trained on t < max_timestep can be sampled from."""
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    n = sharp.shape[0]
    g = torch.Generator().manual_seed(seed)

    # 1. latents of the held-out pairs (fp32)
    sharp, blurry = sharp.to(device), blurry.to(device)
    z_0 = pipe.encode(sharp, generator=g)
    z_b = pipe.encode(blurry, blurry=True, generator=g)
    context = pipe.null_text_embedding(n).to(device, dtype)

    # 2. the training objective (the model's own loss function) at fixed timesteps with fixed noise
    with autocast:
        lt = fixed_timestep_losses(pipe.unet, pipe.controlnet, pipe.lkpn, pipe.scheduler, z_0, z_b, context, g,
                                   latent_weight, z_hat_anchor=pipe.config.get("z_hat_anchor", False))
    terms = {"loss": lt.loss.item(), "diffusion_loss": lt.diffusion_loss.item(), "latent_mse": lt.latent_loss.item()}

    # 3. a restoration with the fast sampler, keeping the last step's ẑ
    with autocast:
        out = pipe(blurry, num_inference_steps=steps, sampler="dpmpp", strength=strength,
                   generator=torch.Generator().manual_seed(seed), output_type="pt", return_intermediates=True)
        z_hat_decoded = pipe.decode(out.z_hat[-1].to(device)).cpu()
    restored = out.images.float().cpu()
    sharp, blurry = sharp.cpu(), blurry.cpu()

    metrics = {f"val/{k}": v for k, v in terms.items()}
    metrics["val/blurry_latent_mse"] = float(torch.nn.functional.mse_loss(z_b, z_0))
    metrics["val/psnr_blurry"] = psnr(blurry, sharp)
    metrics["val/psnr_restored"] = psnr(restored, sharp)
    metrics["val/psnr_z_hat"] = psnr(z_hat_decoded.float().clamp(0, 1), sharp)  # ẑ decoded alone (strength 0)

    # 4. the grid: blurry | decoded ẑ | restored | sharp, one row per pair
    rows = [np.concatenate([_to_uint8(x[i]) for x in (blurry, z_hat_decoded, restored, sharp)], axis=1)
            for i in range(n)]
    return metrics, np.concatenate(rows, axis=0)
