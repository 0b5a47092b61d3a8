"""The public contract (DESIGN §2): shapes, ranges, clean-motion == convolution, determinism."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deblurdiff.blur_synthesis import kernels_to_array, load_recipe, synthesize


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    imgs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = [torch.from_numpy(np.ascontiguousarray(im[:160, :192])).permute(2, 0, 1).float() / 255 for im in imgs]
    return torch.stack(crops)  # (4, 3, 160, 192)


@pytest.mark.parametrize("recipe", ["realistic", "clean-motion", "defocus", "diffbir"])
def test_shapes_ranges_and_records(photos, recipe):
    out = synthesize(photos, recipe, seeds=[3, 4, 5, 6])
    assert out.blurry.shape == photos.shape and out.blurry.dtype == photos.dtype
    assert out.blurry.min() >= 0 and out.blurry.max() <= 1
    assert len(out.kernels) == len(out.params) == 4
    for k, p in zip(out.kernels, out.params):
        arr = kernels_to_array(k)
        assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[0] == len(p["blur"]["psfs"])
        assert (arr >= 0).all() and np.allclose(arr.sum((1, 2)), 1, atol=1e-5)
        assert json.loads(json.dumps(p)) == p  # JSON-able, round-trips exactly
        assert p["recipe"] == recipe and p["recipe_hash"] == load_recipe(recipe).hash


def test_clean_motion_is_convolution_away_from_border(photos):
    out = synthesize(photos, "clean-motion", seeds=[10, 11, 12, 13])
    h, w = photos.shape[-2:]
    for i in range(4):
        k = out.kernels[i]
        assert k.shape[0] == 1
        size = k.shape[-1]
        m = size // 2
        # a 16x16 window of interior outputs (any pixel at least K//2 from the border), checked against
        # F.conv2d in valid mode: true convolution = correlation with the flipped kernel
        for y0, x0 in ((m, m), (h - m - 16, w - m - 16)):
            if y0 < m or x0 < m:
                continue
            patch = photos[i : i + 1, :, y0 - m : y0 + 16 + m, x0 - m : x0 + 16 + m].transpose(0, 1)  # (3, 1, ., .)
            ref = F.conv2d(patch, k.flip(-2, -1)[None]).transpose(0, 1)  # (1, 3, 16, 16)
            torch.testing.assert_close(out.blurry[i : i + 1, :, y0 : y0 + 16, x0 : x0 + 16], ref, atol=2e-5, rtol=0)
        # and it is blurred: not the sharp image
        assert (out.blurry[i] - photos[i]).abs().mean() > 1e-3


def test_same_seed_same_result_whatever_the_batch(photos):
    seeds = [101, 102, 103, 104]
    batch = synthesize(photos, "realistic", seeds=seeds)
    for i in range(4):
        alone = synthesize(photos[i : i + 1], "realistic", seeds=[seeds[i]])
        assert torch.equal(alone.blurry[0], batch.blurry[i])
        assert torch.equal(alone.kernels[0], batch.kernels[i])
        assert alone.params[0] == batch.params[i]
    # reversed order: each sample follows its seed, not its position
    rev = synthesize(photos.flip(0), "realistic", seeds=seeds[::-1])
    assert torch.equal(rev.blurry.flip(0), batch.blurry)
    # a different seed gives a different degradation
    other = synthesize(photos[:1], "realistic", seeds=[999])
    assert not torch.equal(other.blurry[0], batch.blurry[0])
