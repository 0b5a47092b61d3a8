"""Export: the trained pipeline as one ``DeblurDiffPipeline`` directory.

    pipe = DeblurDiffPipeline.from_pretrained("<output_dir>/model")

The pipeline that was trained is the one saved (nothing is rebuilt from the config, so an sd21 run
does not reload SD-2.1 at the end). Its frozen parts go back to the fp32 weights they were loaded
with (``frozen_fp32``, kept by ``prepare_model`` before a bf16 cast), never a bf16 round trip; the
trainable parts get the consolidated fp32 master weights gathered from the ZeRO shards.
"""

from __future__ import annotations

from pathlib import Path

import torch

from deblurdiff.files import publish_directory

__all__ = ["export_pipeline"]


def export_pipeline(pipe, weights: dict[str, torch.Tensor], frozen_fp32: dict[str, dict[str, torch.Tensor]],
                    out_dir: str | Path) -> Path:
    """Write ``pipe`` to ``out_dir`` in fp32 on the CPU: the trainable parts with ``weights`` (a
    ``CoTrainingModule`` state dict), the frozen parts with ``frozen_fp32`` ({component: state dict}).

    Moves ``pipe`` to the CPU in fp32 (training is over). Written to a temp dir beside ``out_dir`` and
    renamed, so ``out_dir`` is either the previous export or the complete new one.
    """
    from deblurdiff.models import CoTrainingModule

    out_dir = Path(out_dir)
    pipe.to("cpu", torch.float32)
    for name, state in frozen_fp32.items():
        getattr(pipe, name).load_state_dict(state, strict=True)
    CoTrainingModule(pipe).load_state_dict(weights, strict=True)
    return publish_directory(out_dir, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
