"""Robust decoding: every mode becomes 8-bit RGB correctly; broken input raises a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from deblurdiff.imageio import ImageDecodeError, decode_rgb, encode_image, is_image_path, probe, read_rgb


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return photos.astronaut()[::4, ::4].copy()  # (128, 128, 3) uint8, a real photo


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_decode_round_trip(photo, fmt):
    out = decode_rgb(encode_image(photo, fmt))
    assert out.shape == photo.shape and out.dtype == np.uint8
    if fmt == "png":
        assert np.array_equal(out, photo)
    else:
        assert np.abs(out.astype(int) - photo).mean() < 8


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM", "GIF"])
def test_other_pillow_formats(photo, fmt):
    out = decode_rgb(save(Image.fromarray(photo), fmt))
    assert out.shape == photo.shape


def test_grayscale_palette_cmyk(photo):
    gray = decode_rgb(save(Image.fromarray(photo).convert("L"), "PNG"))
    assert gray.shape == photo.shape and np.array_equal(gray[..., 0], gray[..., 2])
    pal = decode_rgb(save(Image.fromarray(photo).convert("P"), "PNG"))
    assert pal.shape == photo.shape
    cmyk = decode_rgb(save(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=98))
    assert np.abs(cmyk.astype(int) - photo).mean() < 12


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = decode_rgb(save(Image.fromarray(values), "PNG"))
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0
    # mid-grey stays mid-grey (clipping would make almost everything 255)
    assert 120 < out[32, 32, 0] < 135


def test_alpha_is_composited_on_white(photo):
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])  # fully transparent
    out = decode_rgb(save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out == 255).all()


def test_exif_orientation_applied(photo):
    img = Image.fromarray(photo[:, :100])  # (128, 100): portrait/landscape distinguishable
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW to display
    out = decode_rgb(save(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (100, 128, 3)


@pytest.mark.parametrize(
    "payload, reason",
    [(b"", "empty"), (b"just some text, no pixels" * 4, "not an image")],
)
def test_broken_inputs_raise_with_reason(payload, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_rgb(payload)


def test_truncated_image(photo):
    data = encode_image(photo, "png")
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode_rgb(data[: len(data) // 2])


def test_pixel_limit_checked_from_header(photo):
    data = encode_image(photo, "png")
    assert probe(data) == (128, 128, "png")
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_rgb(data, max_pixels=128 * 128 - 1)


def test_read_rgb_and_extensions(tmp_path, photo):
    path = tmp_path / "UPPER.JPG"
    path.write_bytes(encode_image(photo, "jpeg"))
    assert is_image_path(path) and not is_image_path(tmp_path / "notes.txt")
    assert read_rgb(path).shape == photo.shape
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        read_rgb(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="directory"):
        read_rgb(tmp_path)
