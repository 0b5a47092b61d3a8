"""Release state dict → each component's diffusers state dict, with the checks that name what does not fit.

Key names are translated by diffusers' own single-file utilities (``convert_ldm_unet_checkpoint``,
``convert_controlnet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_open_clip_checkpoint``);
what is DeblurDiff's own is here:

- the ControlNet's first conv reads ``cat([x_t, z_b, ẑ])`` (4 + 8 channels): its first
  ``in_channels`` input channels become ``conv_in`` (with the bias), the rest the latent hint conv;
- the LKPN is a UNet under ``kpn.unet.`` (deblurdiff's ``LKPN`` keeps it as ``.unet``);
- the text tower only serves to compute the empty-prompt context once (``empty_prompt_context``).

Tensors are passed through (or viewed) as they are: no copies, source dtype; callers cast.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import (
    convert_controlnet_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)

from deblurdiff.convert.release_config import (
    EMPTY_PROMPT_BOS,
    EMPTY_PROMPT_EOS,
    controlnet_config,
    lkpn_config,
    text_config,
    unet_config,
    vae_config,
)
from deblurdiff.errors import UsageError
from deblurdiff.models.controlnet import LatentControlNet
from deblurdiff.models.lkpn import LKPN
from deblurdiff.models.unet import WindowedUNet2DConditionModel

__all__ = ["COMPONENTS", "build_component", "check_fits", "component_state_dict", "empty_prompt_context", "text_tower"]

COMPONENTS = ("vae", "unet", "controlnet", "lkpn")
_SOURCE_PREFIX = {"vae": "vae.", "unet": "unet.", "controlnet": "controlnet.", "lkpn": "kpn.unet.",
                  "clip": "clip.model."}


def _sub(state_dict: dict, prefix: str, new_prefix: str = "") -> dict:
    return {new_prefix + k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def build_component(name: str, params: dict, device: str | torch.device = "meta") -> torch.nn.Module:
    """The component ``name`` for the release config ``params``; on the meta device by default (no memory)."""
    with torch.device(device):
        if name == "vae":
            return AutoencoderKL(**vae_config(params))
        if name == "unet":
            return WindowedUNet2DConditionModel(**unet_config(params))
        if name == "controlnet":
            return LatentControlNet(**controlnet_config(params))
        if name == "lkpn":
            return LKPN(**lkpn_config(params))
    raise ValueError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")


def component_state_dict(name: str, state_dict: dict, params: dict, where: str) -> dict[str, torch.Tensor]:
    """``name``'s weights under diffusers names, from the release state dict (views, source dtype)."""
    prefix = _SOURCE_PREFIX[name]
    try:
        if name == "vae":
            out = convert_ldm_vae_checkpoint(_sub(state_dict, prefix, "first_stage_model."), vae_config(params))
        elif name == "unet":
            out = convert_ldm_unet_checkpoint(_sub(state_dict, prefix, "model.diffusion_model."), unet_config(params))
        elif name == "lkpn":
            unet = convert_ldm_unet_checkpoint(_sub(state_dict, prefix, "model.diffusion_model."),
                                               lkpn_config(params))
            out = {f"unet.{k}": v for k, v in unet.items()}
        elif name == "controlnet":
            cfg = controlnet_config(params)
            out = convert_controlnet_checkpoint(_sub(state_dict, prefix), cfg)
            out = _split_controlnet_input_conv(out, cfg, where)
        else:
            raise ValueError(f"unknown component {name!r}")
    except KeyError as exc:  # the utilities index some keys directly
        raise UsageError(f"{where}: the checkpoint lacks {prefix}{exc.args[0]} (a weight the config needs)") from None
    return {k: v for k, v in out.items() if v is not None}  # .get() of an absent key gives None: reported as missing


def _split_controlnet_input_conv(converted: dict, cfg: dict, where: str) -> dict:
    """controlnet.input_blocks.0.0 (out, 4 + 8, 3, 3) on cat([x_t, z_b, ẑ]) → conv_in (x_t, with the
    bias) + controlnet_cond_embedding.conv (cat([z_b, ẑ]), no bias): the same sum, split in two."""
    weight = converted.get("conv_in.weight")
    if weight is None:
        return converted
    c_in, hint = cfg["in_channels"], cfg["conditioning_channels"]
    if weight.ndim != 4 or weight.shape[1] != c_in + hint:
        raise UsageError(f"{where}: config does not fit the weights: controlnet.input_blocks.0.0.weight is "
                         f"{tuple(weight.shape)} in the checkpoint, expected {c_in} + {hint} input channels "
                         f"(x_t, then the hint) for the config")
    converted["conv_in.weight"] = weight[:, :c_in]
    converted["controlnet_cond_embedding.conv.weight"] = weight[:, c_in:]
    return converted


def _root(tensor: torch.Tensor) -> int:
    """Identity of the checkpoint tensor that ``tensor`` is (or is a view of); works on meta tensors too."""
    return id(tensor._base if tensor._base is not None else tensor)


def check_fits(model: torch.nn.Module, converted: dict, name: str, state_dict: dict, where: str) -> None:
    """Every parameter of ``model`` present with its shape, no checkpoint tensor left over; else the first problem.

    Names are the checkpoint's where the tensor came from one, else diffusers' (``name.key``).
    """
    source_of = {_root(v): k for k, v in state_dict.items() if k.startswith(_SOURCE_PREFIX[name])}

    def source_name(key):
        return source_of.get(_root(converted[key])) or f"{name}.{key} (diffusers name)"

    expected = model.state_dict()
    for key, param in expected.items():
        if key in converted and tuple(converted[key].shape) != tuple(param.shape):
            raise UsageError(f"{where}: config does not fit the weights: {source_name(key)} is "
                             f"{tuple(converted[key].shape)} in the checkpoint, {tuple(param.shape)} for the config")
    missing = [k for k in expected if k not in converted]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"{where}: config does not fit the weights: the checkpoint has no weight for "
                         f"{name}.{missing[0]}{more}")
    extra = [k for k in converted if k not in expected]
    if extra:
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UsageError(f"{where}: config does not fit the weights: unexpected weight {source_name(extra[0])}{more}")
    if name == "clip":  # the tower is cut at the configured layer and its q/k/v are split copies
        return
    used = {_root(t) for t in converted.values()}
    unused = [k for root, k in source_of.items() if root not in used]
    if unused:
        more = f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""
        raise UsageError(f"{where}: config does not fit the weights: unexpected key {unused[0]}{more} "
                         "(the config has no place for it)")


def text_tower(state_dict: dict, params: dict, where: str):
    """(CLIPTextModel on the meta device, its converted weights): the OpenCLIP text tower up to the
    configured layer ("penultimate": every block but the last)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    prefix = _SOURCE_PREFIX["clip"]
    first_mlp = f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"
    if first_mlp not in state_dict:
        raise UsageError(f"{where}: the checkpoint lacks {first_mlp} (the text tower)")
    cfg = CLIPTextConfig(**text_config(params, mlp_width=state_dict[first_mlp].shape[0]))
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    # Keep the blocks the configured layer reads; convert_open_clip_checkpoint only knows SD-2's depth.
    kept = {k: v for k, v in _sub(state_dict, prefix, "cond_stage_model.model.").items()
            if not _is_block_at_or_after(k, cfg.num_hidden_layers)}
    converted = convert_open_clip_checkpoint(model, kept, prefix="cond_stage_model.model.")
    # transformers >= 5: CLIPTextModel's keys have no "text_model." prefix; the projection is unused.
    converted = {k.removeprefix("text_model."): v for k, v in converted.items() if k != "text_projection.weight"}
    check_fits(model, converted, "clip", state_dict, where)
    return model, converted


@torch.no_grad()
def empty_prompt_context(state_dict: dict, params: dict, where: str) -> torch.Tensor:
    """The release's c_txt for the empty prompt, (1, L, D) float32: tokens [BOS, EOS, 0, …] through the
    text tower (``text_tower``), then ln_final — computed once, in float32."""
    model, converted = text_tower(state_dict, params, where)
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True, assign=True)
    length = model.config.max_position_embeddings
    tokens = torch.tensor([[EMPTY_PROMPT_BOS, EMPTY_PROMPT_EOS] + [0] * (length - 2)])
    # position_ids passed explicitly: the model's own buffer is non-persistent (still on meta).
    out = model.eval()(input_ids=tokens, position_ids=torch.arange(length)[None])
    return out.last_hidden_state.float()


def _is_block_at_or_after(key: str, first_dropped: int) -> bool:
    marker = "transformer.resblocks."
    if marker not in key:
        return False
    return int(key.split(marker, 1)[1].split(".", 1)[0]) >= first_dropped
