"""The shard PNG writer: lossless for any pixels, decodable by Pillow, and the same bytes whichever
zlib wrote them (run-length deflate, no hash search), so equal pixels give equal shards on every machine."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deblurdiff.pipelines.png import encode_png


def _decode(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.mode == "RGB"
    return np.asarray(im)


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 48, 3), (33, 257, 3)])
def test_lossless_on_noise_and_smooth_images(shape):
    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)  # every byte value, wrap-around differences
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    smooth = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256, np.full_like(xx, 200)], -1).astype(np.uint8)
    for image in (noise, smooth):
        assert np.array_equal(_decode(encode_png(image)), image)


def test_non_contiguous_input_and_determinism():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    view = image[::2, ::-1]  # strided and reversed: not C-contiguous
    assert np.array_equal(_decode(encode_png(view)), view)
    assert encode_png(view) == encode_png(np.ascontiguousarray(view))


def test_same_bytes_as_stdlib_zlib():
    """Run-length deflate (Z_RLE) has no hash search, so zlib and zlib-ng emit the same stream: the
    shard bytes do not depend on the zlib build or the CPU."""
    image = np.random.default_rng(1).integers(0, 60, (50, 70, 3), dtype=np.uint8)
    data = encode_png(image)
    length = struct.unpack(">I", data[33:37])[0]  # the IDAT chunk follows the 8-byte signature + 25-byte IHDR
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41 : 41 + length])
    stdlib = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    assert stdlib.compress(raw) + stdlib.flush() == data[41 : 41 + length]


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_rejects_other_arrays(bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        encode_png(bad)
