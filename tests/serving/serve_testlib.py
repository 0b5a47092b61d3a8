"""Helpers for the serving tests (imported by name: tests/serving is on sys.path via its conftest)."""

from __future__ import annotations

import io
import socket

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(name: str, width: int, height: int) -> np.ndarray:
    """A real photo from scikit-image, resized to (height, width, 3) uint8 (any size, e.g. not /64)."""
    from skimage import data

    rgb = getattr(data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return np.asarray(Image.fromarray(rgb[..., :3]).resize((width, height), Image.BICUBIC))


def encode(rgb: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
