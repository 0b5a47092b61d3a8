"""The frozen denoising UNet with the release's windowed-attention option.

``UNet2DConditionModel`` plus one config key, ``attention_window`` (None: global attention, as
diffusers; 64: the release, ``64 >> level`` feature px per level, see ``models.windows``). The
parameters and their names are diffusers' own, so any SD-2.1 UNet state dict loads unchanged.
"""

from __future__ import annotations

from diffusers import ModelMixin, UNet2DConditionModel  # noqa: F401 - ModelMixin: see LatentControlNet

from deblurdiff.models.windows import set_attention_windows, signature_with_window

__all__ = ["WindowedUNet2DConditionModel"]


class WindowedUNet2DConditionModel(UNet2DConditionModel):
    """``UNet2DConditionModel(..., attention_window=None)``; windows shrink with the level (the release's UNet)."""

    def __init__(self, *args, attention_window: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_to_config(attention_window=attention_window)
        set_attention_windows(self, attention_window, shrink_per_level=True)

    __init__.__signature__ = signature_with_window(UNet2DConditionModel.__init__)
