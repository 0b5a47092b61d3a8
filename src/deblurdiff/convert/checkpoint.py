"""Open a release-format checkpoint without running anything from it, and check its layout.

The released ``model.pth`` is a pickle from the internet. ``torch.load(weights_only=True)`` only
rebuilds tensors and plain containers (a pickle that names any other global is refused), and
``mmap=True`` maps the tensors from the file instead of reading them, so conversion can go tensor
by tensor with no second full copy in memory.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch

from deblurdiff.errors import UsageError

__all__ = ["RELEASE_PREFIXES", "check_release_layout", "load_checkpoint"]

logger = logging.getLogger(__name__)

# Every key of ControlLDM.state_dict() lies under one of these (DESIGN §1, "Released checkpoint layout").
RELEASE_PREFIXES = ("unet.", "kpn.unet.", "controlnet.", "vae.", "clip.model.")


def load_checkpoint(path: str | Path, flag: str = "--checkpoint") -> dict[str, torch.Tensor]:
    """The flat state dict in ``path``, memory-mapped; a UsageError naming the file and the cause otherwise."""
    p = Path(path)
    where = f"{flag} {path}"
    if not p.is_file():
        raise UsageError(f"{where}: no such file")
    if p.stat().st_size == 0:
        raise UsageError(f"{where}: empty file (not a checkpoint)")
    # mmap needs torch's zip format (every torch.save since 1.6, the release included); the legacy
    # format is read into memory (and said so). A zip without its central directory (at the end) is cut short.
    with open(p, "rb") as f:
        is_zip_start = f.read(4) == b"PK\x03\x04"
    mmap = zipfile.is_zipfile(p)
    if is_zip_start and not mmap:
        raise UsageError(f"{where}: truncated or corrupt checkpoint (a zip archive without its end record)")
    if not mmap:
        logger.warning("%s is not in torch's zip format: reading it into memory (no mmap)", path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            culprit = next((line.strip() for line in message.splitlines() if "Unsupported global" in line
                            or "GLOBAL" in line), "it names objects other than tensors")
            raise UsageError(f"{where}: refused: the pickle carries code or objects other than tensors, which "
                             f"weights_only loading never runs ({culprit})") from None
        raise UsageError(f"{where}: not a PyTorch checkpoint ({message.splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many kinds on garbage; each means "bad file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if mmap or isinstance(exc, EOFError) or "truncat" in first.lower():
            raise UsageError(f"{where}: truncated or corrupt checkpoint ({first})") from None
        raise UsageError(f"{where}: not a PyTorch checkpoint ({type(exc).__name__}: {first})") from None
    return _as_state_dict(obj, where)


def _as_state_dict(obj, where: str) -> dict[str, torch.Tensor]:
    # Lightning-style files wrap the weights as {"state_dict": {...}, ...}; unwrap so the key check
    # below can name what the file holds (a plain SD-2.1 .ckpt is one of those).
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise UsageError(f"{where}: expected a state dict (a dict of tensors), found {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UsageError(f"{where}: expected a flat state dict of tensors; {not_tensors[0]!r} holds a "
                         f"{type(obj[not_tensors[0]]).__name__}")
    return obj


def _patterns(keys, limit: int = 3) -> str:
    shown = list(keys)[:limit]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def check_release_layout(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Every key under a release prefix and every prefix present, else name the first missing/unexpected keys."""
    unexpected = [k for k in state_dict if not k.startswith(RELEASE_PREFIXES)]
    missing = [f"{p}*" for p in RELEASE_PREFIXES if not any(k.startswith(p) for k in state_dict)]
    if missing or unexpected:
        parts = ([f"missing {_patterns(missing)}"] if missing else []) + (
            [f"unexpected keys {_patterns(unexpected)}"] if unexpected else [])
        raise UsageError(f"{where}: not a DeblurDiff release checkpoint ({'; '.join(parts)}); expected the flat "
                         f"ControlLDM state dict with keys under {', '.join(RELEASE_PREFIXES)}")
