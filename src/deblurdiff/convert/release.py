"""The released DeblurDiff checkpoint (or one in its format) → a ``DeblurDiffPipeline``.

    pipe = load_release_checkpoint("model.pth")                 # in memory (tests, notebooks)
    write_pipeline_directory("model.pth", "deblurdiff-release")   # what `deblurdiff convert` does

No base model is needed: the checkpoint holds the UNet, LKPN, ControlNet, VAE and text tower. The
text tower is run once for the empty prompt and not kept (``null_text``). Windowed attention is on,
as in the release. The pipeline's config records where it came from (``origin``).

Memory: ``write_pipeline_directory`` maps the checkpoint afresh for each component and writes its
weights tensor by tensor (``_write_safetensors``), so the peak is about one component of the file
plus one tensor, never a second copy of the whole model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from deblurdiff import __version__
from deblurdiff.convert.checkpoint import check_release_layout, load_checkpoint
from deblurdiff.convert.components import (
    COMPONENTS,
    build_component,
    check_fits,
    component_state_dict,
    empty_prompt_context,
)
from deblurdiff.convert.release_config import load_release_config, released_params
from deblurdiff.errors import UsageError
from deblurdiff.files import publish_directory

__all__ = ["DTYPES", "load_release_checkpoint", "write_pipeline_directory"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
RELEASE_PRESET = "released"


def _params(config: str | Path | None) -> dict:
    return released_params() if config is None else load_release_config(config)


def _origin(checkpoint: Path, config, state_dict: dict, dtype: torch.dtype) -> dict:
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state_dict.values()})
    return {"format": "DeblurDiff release (github.com/kkkls/DeblurDiff, ControlLDM state dict)",
            "checkpoint": checkpoint.name, "checkpoint_bytes": checkpoint.stat().st_size,
            "checkpoint_dtype": "/".join(dtypes),
            "config": "released architecture" if config is None else Path(config).name,
            "dtype": str(dtype).removeprefix("torch."), "converted_by": f"deblurdiff {__version__}"}


def _open(checkpoint, flag: str) -> tuple[dict, str]:
    where = f"{flag} {checkpoint}"
    state_dict = load_checkpoint(checkpoint, flag)
    check_release_layout(state_dict, where)
    return state_dict, where


def _pipeline(components: dict, context: torch.Tensor, origin: dict):
    from deblurdiff.diffusion import DeblurDiffPipeline
    from deblurdiff.models.presets import ddpm_scheduler
    from deblurdiff.models.text import NullTextEmbedding

    # The release's sampler (DDPM respaced, eps) and training split (ControlNet + LKPN trained).
    return DeblurDiffPipeline(**components, scheduler=ddpm_scheduler(), null_text=NullTextEmbedding.from_tensor(context),
                              preset=RELEASE_PRESET, trainable_components=("controlnet", "lkpn"), blurry_range="unit",
                              origin=origin)


def load_release_checkpoint(checkpoint: str | Path, config: str | Path | None = None,
                            dtype: torch.dtype = torch.float32, flag: str = "checkpoint"):
    """The pipeline in memory, weights in ``dtype`` (cast tensor by tensor from the mapped file)."""
    params = _params(config)
    state_dict, where = _open(checkpoint, flag)
    context = empty_prompt_context(state_dict, params, where)
    components = {}
    for name in COMPONENTS:
        converted = component_state_dict(name, state_dict, params, where)
        model = build_component(name, params)
        check_fits(model, converted, name, state_dict, where)
        model.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
        components[name] = model.eval()
    return _pipeline(components, context, _origin(Path(checkpoint), config, state_dict, dtype))


def write_pipeline_directory(checkpoint: str | Path, output: str | Path, config: str | Path | None = None,
                             dtype: torch.dtype = torch.float32, flag: str = "--checkpoint") -> Path:
    """Convert into a new pipeline directory ``output`` (refused if it exists and is not empty).

    Everything is written to a hidden directory beside it and renamed at the end
    (``files.publish_directory``): ``output`` appears complete or not at all.
    """
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"--output {output}: exists and is not an empty directory (choose a new one)")
    params = _params(config)
    state_dict, where = _open(checkpoint, flag)  # fails early on a bad file, before anything is written
    context = empty_prompt_context(state_dict, params, where)
    origin = _origin(Path(checkpoint), config, state_dict, dtype)
    del state_dict  # unmap: each component maps the file again and drops it when written


    def fill(tmp: Path) -> None:
        tmp.mkdir()
        for name in COMPONENTS:
            state_dict, _ = _open(checkpoint, flag)
            converted = component_state_dict(name, state_dict, params, where)
            model = build_component(name, params)
            check_fits(model, converted, name, state_dict, where)
            model.save_config(tmp / name)
            _write_safetensors(tmp / name / "diffusion_pytorch_model.safetensors", converted, dtype)
            del state_dict, converted, model
        # model_index.json, the scheduler and null_text come from a pipeline of meta-device components.
        pipe = _pipeline({name: build_component(name, params) for name in COMPONENTS}, context, origin)
        pipe.save_config(tmp)
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        pipe.null_text.save_pretrained(tmp / "null_text")

    publish_directory(output, fill)  # written beside it, then renamed: complete or absent
    return output


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """A safetensors file written one tensor at a time (``safetensors.torch.save_file`` first builds the
    whole file in memory). Format: u64 header length, JSON header (dtype, shape, byte offsets), data."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for tensor in tensors.values():
            data = tensor.to(dtype).contiguous().reshape(-1)
            f.write(data.view(torch.uint8).numpy())  # little-endian, as safetensors stores
