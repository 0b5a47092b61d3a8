"""Pipeline directories given on the command line (``--model DIR``): check, then load.

One place for the check, so ``deblur``, ``eval`` and ``serve`` reject a bad ``--model`` with the same
one-line message (exit 2) before any heavy work starts.
"""

from __future__ import annotations

from pathlib import Path

from deblurdiff.errors import UsageError

__all__ = ["check_model_dir", "load_pipeline"]


def check_model_dir(path: str | Path, flag: str = "--model") -> str:
    """A pipeline directory (``save_pretrained`` output) as an absolute path, or a UsageError."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such directory")
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: not a directory (expected a pipeline saved with save_pretrained)")
    if not (p / "model_index.json").is_file():
        raise UsageError(f"{flag} {path}: not a DeblurDiff pipeline directory (no model_index.json; "
                         "expected the output of DeblurDiffPipeline.save_pretrained or deblurdiff train)")
    return str(p.resolve())


def load_pipeline(path: str | Path, flag: str = "--model", device: str | None = None):
    """``DeblurDiffPipeline.from_pretrained`` with errors that name the flag and the directory."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from deblurdiff.diffusion import DeblurDiffPipeline

    resolved = check_model_dir(path, flag)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" would clutter stderr
    try:
        pipe = DeblurDiffPipeline.from_pretrained(resolved)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{flag} {path}: cannot load the pipeline ({first})") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(device)
