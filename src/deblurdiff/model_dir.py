"""Pipeline directories given on the command line (``--model DIR``): check, then load.

One place for the check, so ``deblur``, ``eval`` and ``serve`` reject a bad ``--model`` with the same
one-line message (exit 2) before any heavy work starts.
"""

from __future__ import annotations

from pathlib import Path

from deblurdiff.errors import UsageError
from deblurdiff.pretrained import PACKAGED_MODELS, packaged_model

__all__ = ["MODEL_HELP", "check_model_dir", "load_pipeline", "record_sampling"]

# The --model help of every command that takes one.
MODEL_HELP = ("a DeblurDiffPipeline directory (save_pretrained / deblurdiff train output), or the name of a "
              f"packaged one: {', '.join(PACKAGED_MODELS)}")


def check_model_dir(path: str | Path, flag: str = "--model") -> str:
    """A pipeline directory (``save_pretrained`` output) as an absolute path, or a UsageError. The name
    of a packaged pipeline (``deblurdiff.pretrained``) stands for its directory unless a path of that
    name exists."""
    p = Path(path)
    if not p.exists():
        p = packaged_model(str(path)) or p
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such directory (nor a packaged model: "
                         f"{', '.join(PACKAGED_MODELS)})")
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: not a directory (expected a pipeline saved with save_pretrained)")
    if not (p / "model_index.json").is_file():
        raise UsageError(f"{flag} {path}: not a DeblurDiff pipeline directory (no model_index.json; "
                         "expected the output of DeblurDiffPipeline.save_pretrained or deblurdiff train)")
    return str(p.resolve())


def load_pipeline(path: str | Path, flag: str = "--model", device: str | None = None, torch_dtype=None):
    """``DeblurDiffPipeline.from_pretrained`` with errors that name the flag and the directory.

    ``torch_dtype`` (e.g. ``torch.bfloat16`` on a GPU): the weights are loaded in that dtype by
    ``from_pretrained`` itself; casting afterwards with ``pipe.to(dtype)`` would make diffusers warn once
    per component ("There are modules in ... that should be kept in float32")."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from deblurdiff.diffusion import DeblurDiffPipeline

    resolved = check_model_dir(path, flag)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" would clutter stderr
    try:
        pipe = DeblurDiffPipeline.from_pretrained(resolved, **({"dtype": torch_dtype} if torch_dtype else {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{flag} {path}: cannot load the pipeline ({first})") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(device)


def record_sampling(path: str | Path, sampling: dict, validated_on: dict | None = None) -> dict:
    """Record in the pipeline directory the sampler settings the model was validated with
    (``{"sampler", "steps", "strength"}``): ``deblur``, ``eval`` and ``serve`` use them when no flag or
    query parameter says otherwise. Written into ``model_index.json`` (the pipeline's config, where
    ``from_pretrained`` reads it) by write-then-rename; ``validated_on`` (what the choice was measured
    on) goes to ``sampling.json`` beside it for people. Returns the checked settings."""
    import json

    from deblurdiff.diffusion import check_sampling
    from deblurdiff.files import atomic_write_text

    resolved = Path(check_model_dir(path, "model directory"))
    settings = check_sampling(sampling)
    index = json.loads((resolved / "model_index.json").read_text())
    index["sampling"] = settings
    atomic_write_text(resolved / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    if validated_on is not None:
        atomic_write_text(resolved / "sampling.json",
                          json.dumps({"sampling": settings, "validated_on": validated_on}, indent=2) + "\n")
    return settings
