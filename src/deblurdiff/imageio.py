"""Robust image decoding and encoding shared by synth, deblur, serve and eval.

Any format Pillow reads is accepted; the result is always 8-bit RGB ``(H, W, 3)`` uint8 with the EXIF
orientation applied. Grayscale, RGBA (composited on white), palette, CMYK and 16-bit images are
converted correctly (16-bit is *scaled* to 8 bits, not clipped). Anything that cannot become such an
array raises :class:`ImageDecodeError` whose message is the reason, so callers can skip and report.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "decode_rgb",
    "encode_image",
    "is_image_path",
    "probe",
    "read_rgb",
]

# Matched case-insensitively (``.JPG`` is an image too).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm",
     ".pnm", ".tga", ".jp2", ".j2k", ".ico", ".dib", ".pcx", ".sgi", ".qoi"}
)

# Our own limits are enforced explicitly (``max_pixels``); Pillow's global bomb guard stays at its
# default so a library user is protected even without one.
_ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; ``str(error)`` is the reason (e.g. "truncated image")."""


def is_image_path(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in IMAGE_EXTENSIONS


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty file")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file, not a crash
        raise ImageDecodeError(f"cannot read image header ({type(exc).__name__}: {exc})") from None


def probe(data: bytes) -> tuple[int, int, str]:
    """``(width, height, format)`` from the header only: no pixel data is decoded."""
    with _open(data) as img:
        return img.width, img.height, (img.format or "unknown").lower()


def _to_rgb8(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grayscale: scale to 8 bits by the container's range (not clip at 255).
        arr = np.asarray(img)
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        gray = np.clip(np.round(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        gray = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    # RGB;16 etc. come out of Pillow as 8-bit RGB when converted; CMYK/YCbCr/P/L/1 convert directly.
    return np.asarray(img.convert("RGB"))


def decode_rgb(data: bytes, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``data`` to ``(H, W, 3)`` uint8 RGB, EXIF orientation applied.

    ``max_pixels`` is checked on the header, before any pixel is decoded (decompression bombs).
    """
    img = _open(data)
    try:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageDecodeError(
                f"too many pixels: {img.width}x{img.height} = {img.width * img.height} > {max_pixels}")
        if img.width == 0 or img.height == 0:
            raise ImageDecodeError("image has zero width or height")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # raises on truncated / corrupt pixel data
            img = ImageOps.exif_transpose(img) or img
        return np.ascontiguousarray(_to_rgb8(img))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc)
        reason = "truncated image" if "truncated" in message.lower() else f"corrupt image data ({message})"
        raise ImageDecodeError(reason) from None
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
    finally:
        img.close()


def read_rgb(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read and decode a local file; unreadable files raise ImageDecodeError too."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ImageDecodeError("is a directory, not an image file") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file ({exc.strerror or exc})") from None
    return decode_rgb(data, max_pixels=max_pixels)


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 95, compress_level: int = 6) -> bytes:
    """Encode ``(H, W, 3)`` uint8 RGB as PNG (lossless), JPEG or WebP bytes.

    ``compress_level`` (PNG only, 0-9) trades size for speed; every level is lossless and
    deterministic (level 1 is ~4× faster than 6 for ~10 % more bytes).
    """
    key = fmt.lower()
    if key not in _ENCODE_FORMATS:
        raise ValueError(f"format must be one of png, jpeg, webp; got {fmt!r}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a (H, W, 3) uint8 array, got {array.shape} {array.dtype}")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if key != "png" else {"compress_level": compress_level}
    Image.fromarray(array, "RGB").save(buf, format=_ENCODE_FORMATS[key], **kwargs)
    return buf.getvalue()
