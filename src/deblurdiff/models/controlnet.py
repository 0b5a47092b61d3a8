"""The conditioning branch: a ControlNet whose hint lives at latent resolution (DESIGN §1, step 3).

diffusers' stock ``ControlNetModel`` encodes a *pixel-space* hint with a strided conv stack. DeblurDiff's
hint ``cat([z_b, ẑ])`` is already a latent, so it enters through one zero-initialised conv added to
``conv_in(x_t)`` (equivalently a 12-channel ``conv_in`` whose 8 extra input channels start at zero).
Everything else is diffusers' ControlNet: the encoder and middle block copied from the UNet
(``from_unet``) and 13 zero-initialised 1×1 convs whose outputs are added to the frozen UNet's 12 skip
connections and its middle block (for SD-2.1's four levels).
"""

from __future__ import annotations

from diffusers import ControlNetModel, ModelMixin  # noqa: F401 - see below
from torch import nn

from deblurdiff.models.windows import set_attention_windows, signature_with_window

# diffusers' pipeline loader finds a custom component's load method by looking up its base classes
# (ModelMixin, ...) as attributes of the component's *module*, so ModelMixin must be importable here.

__all__ = ["LatentControlNet", "LatentHintEmbedding"]


class LatentHintEmbedding(nn.Module):
    """hint (B, 2C, h, w) -> (B, block_out_channels[0], h, w); starts at exactly zero.

    Same kernel size and padding as the UNet's ``conv_in`` and no bias (``conv_in`` already has
    one), so ``conv_in(x_t) + hint_conv(hint)`` is the 12-channel ``conv_in`` split in two.
    """

    def __init__(self, hint_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(hint_channels, out_channels, kernel_size=3, padding=1, bias=False)
        nn.init.zeros_(self.conv.weight)

    def forward(self, hint):
        return self.conv(hint)


class LatentControlNet(ControlNetModel):
    """``ControlNetModel`` with the latent-resolution hint embedding.

    Build it from the base UNet like any ControlNet:
    ``LatentControlNet.from_unet(unet, conditioning_channels=2 * C)`` copies ``conv_in``, the time
    embedding, the down blocks and the middle block. Call it as diffusers' ControlNet, with
    ``controlnet_cond=cat([z_b, ẑ])`` at latent resolution. The config is ControlNetModel's (the
    unused ``conditioning_embedding_out_channels`` is kept only for that reason) plus
    ``attention_window`` (None: global attention; 64: the release's ControlNet, 64 feature px at
    every level, see ``models.windows``), so ``save_pretrained``/``from_pretrained`` work unchanged.
    """

    def __init__(self, *args, attention_window: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(attention_window=attention_window)
        # Replace the pixel-space hint encoder (strided convs) by one zero conv at latent resolution.
        self.controlnet_cond_embedding = LatentHintEmbedding(
            self.config.conditioning_channels, self.config.block_out_channels[0]
        )
        set_attention_windows(self, attention_window, shrink_per_level=False)

    def set_attention_window(self, window: int | None) -> None:
        """Windowed attention after construction (``from_unet`` builds a global one): ``window`` feature px
        at every level, recorded in the config so ``save_pretrained`` keeps it."""
        self.register_to_config(attention_window=window)
        set_attention_windows(self, window, shrink_per_level=False)

    # ControlNetModel's signature plus attention_window: diffusers reads the config keys from it.
    __init__.__signature__ = signature_with_window(ControlNetModel.__init__)
