"""Windowed attention, as the released DeblurDiff runs every attention block (DESIGN §1).

The release's ``SpatialTransformer`` does not attend over the whole feature map: it cuts it into
overlapping windows, runs GroupNorm → proj_in → transformer → proj_out on each window (GroupNorm
statistics per window), averages the outputs where windows overlap and adds the residual once.
For feature maps no larger than the window this is global attention; above it the results differ
(3–5e-2 relative on eps), and the released weights were tuned for the windowed version.

Here it is an option of the models, recorded in their config (``attention_window``) and installed
at construction, so ``save_pretrained`` / ``from_pretrained`` keep it:

- ``set_attention_windows(model, window, shrink_per_level)`` swaps the class of each of the model's
  ``Transformer2DModel`` blocks to ``WindowedTransformer2DModel`` (same parameters, same state-dict
  keys, another ``forward``), or back when ``window`` is None.
- Window side at level i: ``window >> i`` feature px when ``shrink_per_level`` (the release's UNet and
  LKPN: 64 latent px at every level), else ``window`` at every level (the release's ControlNet).
  The middle block uses the deepest level's value.

Window origins per axis (the release's rule): ``k = min(size, window)``, ``n = (size − 1) // k + 1``
windows, ``step = ceil((size − k) / (n − 1))``, the last window flush with the border.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers.models.transformers.transformer_2d import Transformer2DModel

__all__ = ["WindowedTransformer2DModel", "attention_windows", "set_attention_windows", "signature_with_window",
           "window_origins"]


def window_origins(size: int, window: int) -> list[int]:
    """Start offsets along one axis of length ``size`` for windows of side ``min(size, window)``."""
    k = min(size, window)
    n = (size - 1) // k + 1
    if n == 1:
        return [0]
    step = math.ceil((size - k) / (n - 1))
    return [min(i * step, size - k) for i in range(n)]


class WindowedTransformer2DModel(Transformer2DModel):
    """``Transformer2DModel`` that attends within overlapping windows of ``attention_window`` px.

    Never built directly: ``set_attention_windows`` swaps an existing block's class, so the
    parameters (and their names) are the stock block's. Batches of any size: the windows of every
    sample are stacked along the batch axis, so each sample's result is what it gets alone.
    """

    attention_window: int

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                class_labels=None, cross_attention_kwargs=None, attention_mask=None,
                encoder_attention_mask=None, return_dict=True):
        b, _, h, w = hidden_states.shape  # (B, C, h, w)
        ys, xs = window_origins(h, self.attention_window), window_origins(w, self.attention_window)
        if len(ys) == 1 and len(xs) == 1:  # one window covers the map: plain global attention
            return super().forward(hidden_states, encoder_hidden_states, timestep, added_cond_kwargs, class_labels,
                                   cross_attention_kwargs, attention_mask, encoder_attention_mask, return_dict)
        if any(x is not None for x in (timestep, added_cond_kwargs, class_labels, attention_mask,
                                       encoder_attention_mask)):
            raise ValueError("windowed attention takes hidden_states and encoder_hidden_states only "
                             "(no timestep, class labels or attention masks)")
        kh, kw = min(h, self.attention_window), min(w, self.attention_window)
        boxes = [(y, x) for y in ys for x in xs]
        windows = torch.cat([hidden_states[:, :, y:y + kh, x:x + kw] for y, x in boxes])  # (n·B, C, kh, kw)
        context = None if encoder_hidden_states is None else encoder_hidden_states.repeat(len(boxes), 1, 1)
        # The stock forward adds each window's input back; remove it so the residual is added once, below.
        updates = super().forward(windows, context, cross_attention_kwargs=cross_attention_kwargs,
                                  return_dict=False)[0] - windows
        total = torch.zeros_like(hidden_states)
        count = hidden_states.new_zeros((1, 1, h, w))
        for i, (y, x) in enumerate(boxes):
            total[:, :, y:y + kh, x:x + kw] += updates[i * b:(i + 1) * b]
            count[:, :, y:y + kh, x:x + kw] += 1
        out = hidden_states + total / count  # overlaps averaged, residual once
        return (out,) if not return_dict else self._output(out)

    @staticmethod
    def _output(sample):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)


def _attention_levels(model) -> list[tuple[int, torch.nn.Module]]:
    """(level, Transformer2DModel) for every attention block of a UNet or ControlNet (down, mid, up)."""
    levels = len(model.config.block_out_channels)
    found = []
    for level, block in enumerate(model.down_blocks):
        found += [(level, a) for a in getattr(block, "attentions", [])]
    found += [(levels - 1, a) for a in getattr(model.mid_block, "attentions", [])]
    for i, block in enumerate(getattr(model, "up_blocks", [])):
        found += [(levels - 1 - i, a) for a in getattr(block, "attentions", [])]
    return found


def set_attention_windows(model, window: int | None, shrink_per_level: bool) -> None:
    """Make every attention block of ``model`` (a UNet2DConditionModel or ControlNetModel) windowed
    (``window`` px at level 0, halved per level when ``shrink_per_level``), or global (None)."""
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"attention_window must be a positive integer or None, got {window!r}")
    for level, block in _attention_levels(model):
        if not isinstance(block, Transformer2DModel):
            raise TypeError(f"expected Transformer2DModel attention blocks, got {type(block).__name__}")
        if window is None:
            block.__class__ = Transformer2DModel
            continue
        side = window >> level if shrink_per_level else window
        if side < 1:
            raise ValueError(f"attention_window {window} halved over {level} levels leaves no window")
        block.__class__ = WindowedTransformer2DModel
        block.attention_window = side


def attention_windows(model) -> list[int | None]:
    """The window side of each attention block (None: global), in ``_attention_levels`` order."""
    return [getattr(b, "attention_window", None) if isinstance(b, WindowedTransformer2DModel) else None
            for _, b in _attention_levels(model)]


def signature_with_window(parent_init) -> inspect.Signature:
    """``parent_init``'s signature plus ``attention_window=None``.

    diffusers reads a model's config keys from its ``__init__`` signature (``register_to_config``,
    ``from_config``), so a subclass that adds the option sets ``__init__.__signature__`` to this.
    """
    sig = inspect.signature(parent_init)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    extra = inspect.Parameter("attention_window", inspect.Parameter.KEYWORD_ONLY
                              if any(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params)
                              else inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    return sig.replace(parameters=[*params, extra])
