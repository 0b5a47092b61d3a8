"""The release's model config (``configs/inference/cldm.yaml`` format) → the components' diffusers configs.

The release describes its networks in LDM terms (``model_channels``, ``channel_mult``,
``attention_resolutions`` …) and hard-codes its LKPN in ``model/lkpn.py``. ``released_params()`` is
that architecture; ``load_release_config(path)`` reads a YAML in the same format (``target`` /
``params`` with ``unet_cfg``, ``vae_cfg``, ``clip_cfg``, ``controlnet_cfg``, ``latent_scale_factor``
and optionally ``lkpn_cfg``). The ``*_config`` functions translate one section each.
"""

from __future__ import annotations

import copy
from pathlib import Path

from deblurdiff.errors import UsageError

__all__ = ["EAC_KERNEL_SIZE", "RELEASE_ATTENTION_WINDOW", "controlnet_config", "lkpn_config", "load_release_config",
           "released_params", "text_config", "unet_config", "vae_config"]

# Hard-coded in the release (not in its config): EAC's 5×5 kernels, and the attention windows of
# every SpatialTransformer (64 px at level 0; see deblurdiff.models.windows).
EAC_KERNEL_SIZE = 5
RELEASE_ATTENTION_WINDOW = 64

_SD21_UNET = dict(use_checkpoint=True, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                  attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=64,
                  use_spatial_transformer=True, use_linear_in_transformer=True, transformer_depth=1, context_dim=1024,
                  legacy=False)

# kkkls/DeblurDiff @ 8c56b25: configs/inference/cldm.yaml `params`, plus model/lkpn.py's UNetModel kwargs.
_RELEASED_PARAMS = dict(
    latent_scale_factor=0.18215,
    unet_cfg=_SD21_UNET,
    vae_cfg=dict(embed_dim=4, ddconfig=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3,
                                            ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                                            dropout=0.0)),
    clip_cfg=dict(embed_dim=1024,
                  vision_cfg=dict(image_size=224, layers=32, width=1280, head_width=80, patch_size=14),
                  text_cfg=dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24),
                  layer="penultimate"),
    controlnet_cfg={**{k: v for k, v in _SD21_UNET.items() if k != "out_channels"}, "hint_channels": 8},
    lkpn_cfg={**_SD21_UNET, "in_channels": 8, "out_channels": 100, "model_channels": 128},
)
_SECTIONS = ("unet_cfg", "vae_cfg", "clip_cfg", "controlnet_cfg")


def released_params() -> dict:
    """The released architecture's ``params`` (with ``lkpn_cfg`` filled in), a fresh copy."""
    return copy.deepcopy(_RELEASED_PARAMS)


def load_release_config(path: str | Path) -> dict:
    """``params`` of a release-format YAML, with ``lkpn_cfg`` defaulting to the released LKPN."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"--config {path}: cannot read it as YAML ({str(exc).splitlines()[0]})") from None
    params = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise UsageError(f"--config {path}: expected the release's format (target: model.ControlLDM, params: ...), "
                         "found no 'params' mapping")
    missing = [k for k in (*_SECTIONS, "latent_scale_factor") if k not in params]
    if missing:
        raise UsageError(f"--config {path}: params lacks {', '.join(missing)}")
    params = copy.deepcopy(params)
    # The release's ControlLDM has no lkpn_cfg (its LKPN is hard-coded); a config may spell it out.
    params.setdefault("lkpn_cfg", copy.deepcopy(_RELEASED_PARAMS["lkpn_cfg"]))
    return params


def _get(section: dict, key: str, where: str):
    if key not in section:
        raise UsageError(f"config {where}.{key}: missing")
    return section[key]


def _ldm_unet_levels(cfg: dict, where: str) -> dict:
    """LDM UNetModel kwargs → the diffusers kwargs UNet, ControlNet and LKPN share."""
    if not _get(cfg, "use_spatial_transformer", where) or cfg.get("legacy", False):
        raise UsageError(f"config {where}: only use_spatial_transformer: True, legacy: False is supported "
                         "(the release's setting)")
    layers = _get(cfg, "num_res_blocks", where)
    if not isinstance(layers, int):
        raise UsageError(f"config {where}.num_res_blocks: expected one integer for every level, got {layers!r}")
    channels = [_get(cfg, "model_channels", where) * m for m in _get(cfg, "channel_mult", where)]
    attention = set(_get(cfg, "attention_resolutions", where))
    # Level i downsamples by 2**i; it has cross-attention iff 2**i is listed.
    has_attn = [2**i in attention for i in range(len(channels))]
    head_channels = cfg.get("num_head_channels", -1)
    heads = [c // head_channels for c in channels] if head_channels != -1 else [_get(cfg, "num_heads", where)] * len(
        channels)
    return dict(
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
        attention_head_dim=tuple(heads),  # diffusers' name for the number of heads per level
        cross_attention_dim=_get(cfg, "context_dim", where),
        use_linear_projection=bool(cfg.get("use_linear_in_transformer", False)),
        transformer_layers_per_block=cfg.get("transformer_depth", 1),
    )


def unet_config(params: dict) -> dict:
    """``WindowedUNet2DConditionModel`` kwargs (windows on, as the release)."""
    cfg = params["unet_cfg"]
    return dict(in_channels=_get(cfg, "in_channels", "unet_cfg"), out_channels=_get(cfg, "out_channels", "unet_cfg"),
                attention_window=RELEASE_ATTENTION_WINDOW, **_ldm_unet_levels(cfg, "unet_cfg"))


def controlnet_config(params: dict) -> dict:
    """``LatentControlNet`` kwargs: the hint cat([z_b, ẑ]) has ``hint_channels`` channels."""
    cfg = params["controlnet_cfg"]
    levels = _ldm_unet_levels(cfg, "controlnet_cfg")
    del levels["up_block_types"]  # a ControlNet has no decoder
    return dict(in_channels=_get(cfg, "in_channels", "controlnet_cfg"),
                conditioning_channels=_get(cfg, "hint_channels", "controlnet_cfg"),
                attention_window=RELEASE_ATTENTION_WINDOW, **levels)


def lkpn_config(params: dict) -> dict:
    """``LKPN`` kwargs: in cat([z_b, x_t]) = 2C channels, out C·5² kernels (EAC groups = C)."""
    cfg = params["lkpn_cfg"]
    levels = _ldm_unet_levels(cfg, "lkpn_cfg")
    c = params["unet_cfg"]["in_channels"]
    if cfg.get("in_channels") != 2 * c or cfg.get("out_channels") != c * EAC_KERNEL_SIZE**2:
        raise UsageError(f"config lkpn_cfg: expected in_channels {2 * c} (z_b and x_t) and out_channels "
                         f"{c * EAC_KERNEL_SIZE**2} ({c} channels × {EAC_KERNEL_SIZE}² taps), got "
                         f"{cfg.get('in_channels')} and {cfg.get('out_channels')}")
    levels["attention_heads"] = levels.pop("attention_head_dim")
    if not isinstance(levels["transformer_layers_per_block"], int):
        raise UsageError("config lkpn_cfg.transformer_depth: expected one integer")
    return dict(latent_channels=c, kernel_size=EAC_KERNEL_SIZE, zero_sum_kernels=False,
                attention_window=RELEASE_ATTENTION_WINDOW, **levels)


def vae_config(params: dict) -> dict:
    """``AutoencoderKL`` kwargs."""
    vae = params["vae_cfg"]
    dd = _get(vae, "ddconfig", "vae_cfg")
    if not dd.get("double_z", True) or vae.get("embed_dim") != dd.get("z_channels"):
        raise UsageError("config vae_cfg: expected double_z: True and embed_dim == ddconfig.z_channels "
                         f"(got {dd.get('double_z')}, {vae.get('embed_dim')} vs {dd.get('z_channels')})")
    channels = [_get(dd, "ch", "vae_cfg.ddconfig") * m for m in _get(dd, "ch_mult", "vae_cfg.ddconfig")]
    return dict(in_channels=dd["in_channels"], out_channels=dd["out_ch"], latent_channels=dd["z_channels"],
                block_out_channels=tuple(channels), layers_per_block=dd["num_res_blocks"],
                down_block_types=("DownEncoderBlock2D",) * len(channels),
                up_block_types=("UpDecoderBlock2D",) * len(channels),
                sample_size=dd.get("resolution", 256), scaling_factor=float(params["latent_scale_factor"]))


def text_config(params: dict, mlp_width: int) -> dict:
    """``CLIPTextConfig`` kwargs for the OpenCLIP text tower up to the layer the release reads.

    ``mlp_width``: from the checkpoint (OpenCLIP's mlp_ratio is not in the config).
    """
    clip = params["clip_cfg"]
    text = _get(clip, "text_cfg", "clip_cfg")
    layer = clip.get("layer", "last")
    if layer not in ("last", "penultimate"):
        raise UsageError(f"config clip_cfg.layer: expected 'last' or 'penultimate', got {layer!r}")
    return dict(vocab_size=text["vocab_size"], hidden_size=text["width"], intermediate_size=mlp_width,
                num_attention_heads=text["heads"],
                num_hidden_layers=text["layers"] - (1 if layer == "penultimate" else 0),
                max_position_embeddings=text["context_length"], hidden_act="gelu", layer_norm_eps=1e-5,
                projection_dim=clip.get("embed_dim", text["width"]),
                bos_token_id=EMPTY_PROMPT_BOS, eos_token_id=EMPTY_PROMPT_EOS, pad_token_id=0)


# OpenCLIP's tokenizer: start/end of text; the release pads with 0 (not with EOS).
EMPTY_PROMPT_BOS, EMPTY_PROMPT_EOS = 49406, 49407
