"""LKPN: the Latent Kernel Prediction Network (DESIGN §1, step 1-2).

A conditional UNet reads ``cat([z_b, x_t])`` with the timestep and the text context and predicts one
``k×k`` kernel per latent channel and pixel, ``K`` with ``C·k²`` channels. EAC applies them to the
blurry latent: ``ẑ = EAC(z_b, K) + z_b``. The output conv starts at zero, so ``K == 0`` and
``ẑ == z_b`` at initialisation: training starts from the identity, never from a random blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput

from deblurdiff import ops
from deblurdiff.models.windows import set_attention_windows

__all__ = ["LKPN", "LKPNOutput"]


@dataclass
class LKPNOutput(BaseOutput):
    """``z_hat``: ẑ = EAC(z_b, K) + z_b, (B, C, h, w). ``kernels``: K, (B, C·k², h, w)."""

    z_hat: torch.Tensor
    kernels: torch.Tensor


class LKPN(ModelMixin, ConfigMixin):
    """Latent Kernel Prediction Network.

    Args mirror ``UNet2DConditionModel``; the paper's LKPN is the default: base channels 128,
    multipliers (1, 2, 4, 4), 2 res blocks per level, cross-attention at the three highest
    resolutions and the middle block with head dim 64, context 1024, linear projections.
    ``attention_heads`` is the number of heads per level (channels / 64 for head dim 64).

    ``zero_sum_kernels`` (off in the paper; on in the tiny preset) removes each kernel's mean over its
    k² taps, so ``ẑ − z_b`` is a pure high-pass correction: EAC sharpens but cannot change the local
    brightness of z_b. A freshly trained small LKPN otherwise spends its first minutes on noisy
    per-pixel gains (Σ K ≠ 0) that fit the training photos' brightness and hurt on new ones.

    ``reads_x_t`` (on in the paper; off in the tiny preset): off, the LKPN ignores the sampler's x_t and
    timestep and always reads ``cat([z_b, z_b])`` at t = 0, so ẑ is one blind deblurring of z_b, the
    same at every step. Co-trained on x_t noised from the *sharp* z_0, a small LKPN learns to take its
    kernels from a nearly clean x_t, then meets x_t noised from the blurry estimate at inference and
    makes ẑ worse than z_b (benchmarks/RESULTS.md, "Demo restoration, third round").

    ``attention_window`` (None: global attention; 64: the release) makes every attention block attend
    within overlapping windows of ``attention_window >> level`` feature px (see ``models.windows``).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        kernel_size: int = 5,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
        ),
        attention_heads: int | tuple[int, ...] = (2, 4, 8, 8),
        cross_attention_dim: int = 1024,
        use_linear_projection: bool = True,
        norm_num_groups: int = 32,
        zero_sum_kernels: bool = False,
        transformer_layers_per_block: int = 1,
        attention_window: int | None = None,
        reads_x_t: bool = True,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (EAC centres the kernel), got {kernel_size}")
        c, k = latent_channels, kernel_size
        self.unet = UNet2DConditionModel(
            in_channels=2 * c,  # cat([z_b, x_t])
            out_channels=c * k * k,  # K: one k×k kernel per latent channel (EAC groups G = C)
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            # diffusers names the number of heads `attention_head_dim` (historical naming issue).
            attention_head_dim=attention_heads,
            cross_attention_dim=cross_attention_dim,
            use_linear_projection=use_linear_projection,
            norm_num_groups=norm_num_groups,
            transformer_layers_per_block=transformer_layers_per_block,
        )
        set_attention_windows(self.unet, attention_window, shrink_per_level=True)
        # Zero output conv: K == 0 at init, hence ẑ == z_b (identity start).
        torch.nn.init.zeros_(self.unet.conv_out.weight)
        torch.nn.init.zeros_(self.unet.conv_out.bias)

    @property
    def kernel_channels(self) -> int:
        return self.config.latent_channels * self.config.kernel_size**2

    def forward(
        self,
        z_blur: torch.Tensor,
        x_t: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = True,
    ) -> LKPNOutput | tuple[torch.Tensor, torch.Tensor]:
        """z_blur = z_b and x_t: (B, C, h, w); encoder_hidden_states: (B, L, D)."""
        if not self.config.reads_x_t:  # blind: z_b alone, at t = 0 (see the class doc)
            x_t, timestep = z_blur, torch.zeros(z_blur.shape[0], dtype=torch.long, device=z_blur.device)
        kernels = self.unet(  # (B, C·k², h, w)
            torch.cat([z_blur, x_t], dim=1), timestep, encoder_hidden_states=encoder_hidden_states
        ).sample
        if self.config.zero_sum_kernels:
            b, _, h, w = kernels.shape
            taps = kernels.view(b, self.config.latent_channels, -1, h, w)  # (B, C, k², h, w)
            kernels = (taps - taps.mean(dim=2, keepdim=True)).view(b, -1, h, w)
        # EAC sums k² products per pixel: run it in fp32 even when the networks run in bf16/fp16.
        z_hat = ops.eac(z_blur.float(), kernels.float(), self.config.kernel_size).to(z_blur.dtype) + z_blur
        if not return_dict:
            return z_hat, kernels
        return LKPNOutput(z_hat=z_hat, kernels=kernels)
