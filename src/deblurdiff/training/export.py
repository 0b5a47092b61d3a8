"""Export: the trained weights plus the frozen parts as one ``DeblurDiffPipeline`` directory.

    pipe = DeblurDiffPipeline.from_pretrained("<output_dir>/model")

The frozen parts are rebuilt from their source (the preset's seed, or ``model.base_model``) in fp32,
so the export holds them bit-for-bit as they were loaded, never a bf16 round trip; the trainable
parts are the consolidated fp32 master weights gathered from the ZeRO shards.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deblurdiff.files import publish_directory

__all__ = ["export_pipeline", "set_trainable"]


def set_trainable(pipe, names) -> None:
    """Train exactly ``names`` (a subset of unet / controlnet / lkpn); freeze everything else."""
    pipe.register_to_config(trainable_components=list(names))
    for name in ("vae", "unet", "controlnet", "lkpn", "null_text"):
        getattr(pipe, name).requires_grad_(name in names)


def build_pipeline(cfg, **kwargs):
    """The configured preset (fp32 on CPU unless ``device``/``torch_dtype`` say otherwise)."""
    from deblurdiff import DeblurDiffPipeline

    pipe = DeblurDiffPipeline.from_preset(cfg.model.preset, base_model=cfg.model.base_model,
                                          random_init=cfg.model.random_init, seed=cfg.run.seed, **kwargs)
    if cfg.model.trainable is not None:
        set_trainable(pipe, cfg.model.trainable)
    return pipe


def export_pipeline(cfg, weights: dict[str, torch.Tensor], out_dir: str | Path) -> Path:
    """Write ``weights`` (a ``CoTrainingModule`` state dict, fp32) with the frozen parts to ``out_dir``.

    Written to a temp dir beside ``out_dir`` and renamed, so ``out_dir`` is either the previous export
    or the complete new one.
    """
    from deblurdiff.models import CoTrainingModule

    out_dir = Path(out_dir)
    pipe = build_pipeline(cfg)
    CoTrainingModule(pipe).load_state_dict(weights, strict=True)
    return publish_directory(out_dir, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
