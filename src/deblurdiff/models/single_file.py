"""Stable Diffusion 2.1-base from a single ``.ckpt`` / ``.safetensors`` file (e.g. ``v2-1_512-ema-pruned.ckpt``,
what the DeblurDiff authors train from), without the hub.

diffusers' ``from_single_file`` builds the UNet and VAE from the file plus an *original* (LDM) config
given explicitly: the YAML beside the file (``<name>.yaml``, the convention of LDM tools) or, without
one, SD-2.1-base's own (``v2-inference.yaml`` values). The empty-prompt context is computed once from
the file's OpenCLIP text tower (``cond_stage_model.model.``), as ``deblurdiff convert`` does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deblurdiff.errors import UsageError

__all__ = ["SINGLE_FILE_SUFFIXES", "load_sd21_single_file"]

SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pth", ".pt")


def _sd21_original_config() -> dict:
    """SD-2.1-base's LDM config (configs/stable-diffusion/v2-inference.yaml), the parts the loaders read."""
    from deblurdiff.convert.release_config import released_params

    released = released_params()  # the release is built on SD-2.1-base: same UNet and VAE
    return {"model": {"params": {
        "scale_factor": released["latent_scale_factor"],
        "unet_config": {"params": released["unet_cfg"]},
        "first_stage_config": {"params": released["vae_cfg"]},
        "cond_stage_config": {"params": {"layer": "penultimate"}},
    }}}


def _read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise UsageError(f"{where}: not a readable safetensors file ({exc})") from None
    from deblurdiff.convert.checkpoint import load_checkpoint

    return load_checkpoint(path, flag="base_model")  # weights_only: a .ckpt never runs pickled code


def _text_params(state_dict: dict, original: dict) -> dict:
    """The text tower's size, from the weights (OpenCLIP keeps 64-dim heads) and the config's layer."""
    prefix = "cond_stage_model.model."
    tokens = state_dict[f"{prefix}token_embedding.weight"]  # (vocab, width)
    layers = 1 + max(int(k.split("resblocks.", 1)[1].split(".", 1)[0]) for k in state_dict
                     if k.startswith(f"{prefix}transformer.resblocks."))
    cond = original["model"]["params"].get("cond_stage_config", {}).get("params", {})
    width = tokens.shape[1]
    text = dict(context_length=state_dict[f"{prefix}positional_embedding"].shape[0], vocab_size=tokens.shape[0],
                width=width, heads=cond.get("heads", max(1, width // 64)), layers=layers)
    return {"clip_cfg": {"text_cfg": text, "layer": cond.get("layer", "penultimate"), "embed_dim": width}}


def load_sd21_single_file(path: str | Path):
    """(AutoencoderKL, UNet2DConditionModel, empty-prompt context (1, 77, D)) from one SD file."""
    import yaml
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from deblurdiff.convert.components import empty_prompt_context

    path = Path(path)
    where = f"base_model {path}"
    beside = path.with_suffix(".yaml")
    original = yaml.safe_load(beside.read_text()) if beside.is_file() else _sd21_original_config()
    state_dict = _read_state_dict(path, where)
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."):
        if not any(k.startswith(prefix) for k in state_dict):
            raise UsageError(f"{where}: not a Stable Diffusion 2.x checkpoint (no {prefix}* keys)")
    try:
        unet = UNet2DConditionModel.from_single_file(state_dict, original_config=original, local_files_only=True)
        vae = AutoencoderKL.from_single_file(state_dict, original_config=original, local_files_only=True)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UsageError(f"{where}: does not fit {'its ' + beside.name if beside.is_file() else 'SD-2.1-base'} "
                         f"config ({str(exc).splitlines()[0][:300]})") from None
    clip = {f"clip.model.{k.removeprefix('cond_stage_model.model.')}": v for k, v in state_dict.items()
            if k.startswith("cond_stage_model.model.")}
    context = empty_prompt_context(clip, _text_params(state_dict, original), where)
    return vae, unet, context
