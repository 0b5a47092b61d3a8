"""Limits and parameter validation of the HTTP API, without Ray (fast)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deblurdiff.serving.limits import ApiError, Limits, auto_tile, parse_params
from deblurdiff.serving.http import check_image

SAMPLERS = ("ddpm", "ddim")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which carries almost no data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _encode(fmt: str, size=(20, 10)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_defaults_match_the_documented_limits():
    limits = Limits()
    assert limits.max_body_bytes == 20 * 1024 * 1024
    assert limits.max_pixels == 4096 * 4096
    # No serve-wide default steps: a request without `steps` runs the model's validated settings.
    assert (limits.max_steps, limits.default_steps) == (200, None)


def test_defaults_are_applied_and_seed_is_drawn_when_absent():
    params = parse_params({}, Limits(), SAMPLERS)
    assert params.steps is None and params.sampler is None and params.tile is None and params.format == "png"
    assert 0 <= params.seed < 2**31
    params = parse_params({"steps": "7", "sampler": "ddim", "seed": "42", "tile": "128", "format": "JPG"},
                          Limits(), SAMPLERS)
    assert (params.steps, params.sampler, params.seed, params.tile, params.format) == (7, "ddim", 42, 128, "jpeg")


@pytest.mark.parametrize("query, field", [
    ({"steps": "0"}, "steps"),
    ({"steps": "201"}, "steps"),
    ({"steps": "ten"}, "steps"),
    ({"steps": "1.5"}, "steps"),
    ({"sampler": "euler-magic"}, "sampler"),
    ({"seed": "-1"}, "seed"),
    ({"seed": "x"}, "seed"),
    ({"tile": "100"}, "tile"),
    ({"tile": "32"}, "tile"),
    ({"format": "bmp"}, "format"),
    ({"stepz": "3"}, "stepz"),
])
def test_bad_parameters_are_422_naming_the_field(query, field):
    with pytest.raises(ApiError) as info:
        parse_params(query, Limits(), SAMPLERS)
    assert info.value.status == 422
    assert info.value.message.startswith(field + ":")
    assert info.value.body() == {"error": {"code": "invalid_parameter", "message": info.value.message}}


def test_large_images_are_tiled_unless_a_tile_is_given():
    limits = Limits(tile_above_pixels=100 * 100, default_tile=256)
    params = parse_params({}, limits, SAMPLERS)
    assert auto_tile(params, 100 * 100, limits).tile is None
    assert auto_tile(params, 100 * 101, limits).tile == 256
    chosen = parse_params({"tile": "64"}, limits, SAMPLERS)
    assert auto_tile(chosen, 10**6, limits).tile == 64


def test_limits_reject_inconsistent_settings():
    with pytest.raises(ValueError, match="default_steps"):
        Limits(max_steps=10, default_steps=50)
    with pytest.raises(ValueError, match="unknown|extra"):
        Limits(max_bodybytes=3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_pass_the_header_check(fmt):
    assert check_image(_encode(fmt), Limits()) == (20, 10, fmt.lower())


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_415(fmt):
    with pytest.raises(ApiError) as info:
        check_image(_encode(fmt), Limits())
    assert info.value.status == 415 and fmt in info.value.message


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_non_images_are_400(data):
    with pytest.raises(ApiError) as info:
        check_image(data, Limits())
    assert info.value.status == 400 and info.value.code == "invalid_image"


@pytest.mark.parametrize("width, height", [(5000, 5000), (60000, 60000)])
def test_pixel_bombs_are_413_from_the_header(width, height):
    # 5000^2 passes Pillow's own guard and is stopped by ours; 60000^2 trips Pillow's guard first.
    with pytest.raises(ApiError) as info:
        check_image(_png_header_only(width, height), Limits())
    assert info.value.status == 413 and info.value.code == "too_many_pixels"
