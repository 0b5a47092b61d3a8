"""Image formation: camera curves round-trip, Poisson–Gaussian noise statistics, saturation, Bayer, JPEG."""

import io

import numpy as np
import pytest
import torch
from kornia.color import CFA, linear_rgb_to_rgb, raw_to_rgb, rgb_to_linear_rgb
from PIL import Image

from deblurdiff.blur_synthesis import Recipe, load_recipe, synthesize
from deblurdiff.blur_synthesis import formation as fm
from deblurdiff.blur_synthesis.conv import fft_blur


@pytest.mark.parametrize("curve,gamma", [("srgb", 0.0), ("gamma", 1.8), ("gamma", 2.6)])
def test_linear_light_round_trip(curve, gamma):
    x = torch.linspace(0, 1, 3 * 32 * 32, dtype=torch.float64).reshape(1, 3, 32, 32)
    lin = fm.to_linear(x, curve, gamma)
    assert (lin <= x + 1e-8).all()  # linear light is darker in the mid-tones
    torch.testing.assert_close(fm.from_linear(lin, curve, gamma), x, atol=1e-7, rtol=0)
    if curve == "srgb":  # the sRGB curve is kornia's (re-written for speed; pinned to it here)
        torch.testing.assert_close(lin, rgb_to_linear_rgb(x), atol=5e-8, rtol=0)
        torch.testing.assert_close(fm.from_linear(lin), linear_rgb_to_rgb(lin), atol=5e-8, rtol=0)
        x32 = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(fm.to_linear(x32), rgb_to_linear_rgb(x32), atol=3e-7, rtol=0)
        torch.testing.assert_close(fm.from_linear(x32), linear_rgb_to_rgb(x32), atol=3e-7, rtol=0)
        # the IEC 61966-2-1 value for mid-grey
        assert abs(float(fm.to_linear(torch.full((1, 3, 1, 1), 0.5, dtype=torch.float64))[0, 0]) - 0.21404) < 1e-5


def test_per_sample_gamma():
    x = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    out = fm.to_linear(x, "gamma", torch.tensor([2.0, 3.0]))
    assert torch.allclose(out[0], torch.full_like(out[0], 0.25)) and torch.allclose(out[1], torch.full_like(out[1], 0.125))


def _fit_noise(levels, flat_in, noisy):
    """Per flat patch: mean and variance; least-squares line var = shot * mean + read^2."""
    means = noisy.mean(dim=(1, 2, 3)).double().numpy()
    var = noisy.var(dim=(1, 2, 3)).double().numpy()
    slope, intercept = np.polyfit(means, var, 1)
    return slope, intercept, means, var


def test_poisson_gaussian_noise_functional_statistics():
    levels = torch.linspace(0.05, 0.9, 8, dtype=torch.float64)
    x = levels.reshape(-1, 1, 1, 1).expand(-1, 3, 96, 96).contiguous()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = fm.poisson_gaussian_noise(x, 0.01, 0.02, eps)
    slope, intercept, means, _ = _fit_noise(levels, x, y)
    assert abs(slope - 0.01) / 0.01 < 0.05
    assert abs(intercept - 0.02**2) < 2e-4
    assert np.allclose(means, levels.numpy(), atol=2e-3)  # zero-mean noise


def test_synthesized_noise_follows_poisson_gaussian_model():
    """End to end through synthesize: flat grey images (blur leaves them flat), noise only, one seed
    per level with the same drawn shot/read -> measured variance is linear in the intensity."""
    recipe = Recipe.from_dict({
        "name": "noise-only",
        "blur": {"families": {"gaussian": 1.0}, "gaussian": {"sigma": [0.5, 0.5]}},
        "noise": {"prob": 1.0, "shot": [0.004, 0.004], "read": [0.01, 0.01]},
    })
    levels = torch.linspace(0.05, 0.85, 8)
    sharp = levels.reshape(-1, 1, 1, 1).expand(-1, 3, 96, 96).contiguous()
    out = synthesize(sharp, recipe, seeds=list(range(8)))
    assert {(p["noise"]["shot"], p["noise"]["read"]) for p in out.params} == {(0.004, 0.01)}
    slope, intercept, means, var = _fit_noise(levels, sharp, out.blurry)
    assert abs(slope - 0.004) / 0.004 < 0.08, (slope, intercept)
    assert abs(intercept - 0.01**2) < 6e-5, (slope, intercept)
    residual = var - (slope * means + intercept)
    assert np.abs(residual).max() < 0.1 * var.max()  # linear, not just on average


def test_realistic_noise_levels_are_in_the_brooks_range():
    r = load_recipe("realistic")
    from deblurdiff.blur_synthesis import sample_params

    draws = [sample_params(r, s)["noise"] for s in range(200)]
    shots = np.array([d["shot"] for d in draws])
    reads = np.array([d["read"] for d in draws])
    assert shots.min() >= 1e-4 and shots.max() <= 1.2e-2
    # log-uniform: the median shot noise is near the geometric mean of the range (~1.1e-3)
    assert 5e-4 < np.median(shots) < 2.5e-3
    # read std ~ 1e-4 .. 2e-2 (Brooks et al. 2019: log(read^2) = 2.18 log(shot) + 1.2 + N(0, 0.26))
    assert reads.min() > 2e-5 and reads.max() < 3e-2
    assert np.corrcoef(np.log(shots), np.log(reads))[0, 1] > 0.95


def test_saturation_turns_a_highlight_into_a_clipped_streak():
    x = torch.full((1, 3, 64, 64), 0.05, dtype=torch.float64)
    x[..., 30:34, 30:34] = 1.0  # a small light source, clipped in the sharp image
    psf = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    psf[0, 0, 15, :] = 1 / 31  # horizontal motion, 31 px
    plain = fft_blur(x, psf).clamp(0, 1)
    boosted = fft_blur(fm.boost_highlights(x, 0.9, 8.0), psf).clamp(0, 1)
    assert float(plain.max()) < 0.2  # naive synthesis: a dim grey smear
    assert int((boosted[0, 0] >= 0.999).sum()) >= 4 * 20  # a saturated streak, as cameras record
    assert torch.equal(fm.boost_highlights(x, 0.9, 8.0)[..., :20, :20], x[..., :20, :20])  # dark pixels untouched


@pytest.mark.parametrize("cfa", fm.CFA_PATTERNS)
@pytest.mark.parametrize("shape", [(32, 48), (33, 47)])
def test_bayer_mosaic_demosaic(cfa, shape):
    # a smooth image survives mosaic + bilinear demosaic; the raw keeps the sampled values exactly
    yy, xx = torch.meshgrid(torch.linspace(0, 1, shape[0]), torch.linspace(0, 1, shape[1]), indexing="ij")
    x = torch.stack([0.2 + 0.5 * xx, 0.3 + 0.4 * yy, 0.6 - 0.3 * xx * yy])[None]
    raw = fm.mosaic(x, cfa)
    assert raw.shape == (1, 1, *shape)
    rgb = fm.demosaic(raw, cfa)
    assert rgb.shape == x.shape
    assert float((rgb - x)[..., 1:-1, 1:-1].abs().max()) < 0.03
    assert torch.equal(fm.mosaic(rgb, cfa), raw)


@pytest.mark.parametrize("cfa", fm.CFA_PATTERNS)
def test_demosaic_is_kornias_bit_for_bit(cfa):
    # the green plane is computed without kornia's conv2d; every value must still be kornia's
    g = torch.Generator().manual_seed(3)
    for shape, batch, dtype in [((64, 96), 1, torch.float32), ((512, 512), 1, torch.float32), ((33, 47), 3, torch.float32),
                                ((6, 4), 2, torch.float64), ((255, 257), 1, torch.float64)]:
        raw = torch.rand(batch, 1, *shape, generator=g, dtype=dtype)
        h, w = shape
        padded = torch.nn.functional.pad(raw, (0, w % 2, 0, h % 2), mode="reflect") if (h % 2 or w % 2) else raw
        expected = raw_to_rgb(padded, CFA[cfa])[..., :h, :w]
        assert torch.equal(fm.demosaic(raw, cfa), expected), (shape, batch, dtype)


def test_jpeg_is_the_real_codec():
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    out = fm.jpeg(x, [30, 95])
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out * 255, (out * 255).round())  # decoded 8-bit values
    arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=30)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal((out[0] * 255).round().byte().permute(1, 2, 0).numpy(), ref)
    # lower quality, larger error
    assert (out[0] - x[0]).abs().mean() > (out[1] - x[1]).abs().mean()


@pytest.mark.parametrize("curve", ["srgb", "gamma"])
def test_linear_light_of_uint8_levels_is_the_float_curve_bit_for_bit(curve):
    # the table form must give exactly to_linear(k / 255): synth's shards keep their bytes
    levels = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    as_float = levels.float() / 255
    gammas = torch.tensor([1.8, 2.2, 2.6])
    one = fm.to_linear_levels(levels[:1], curve, 2.37)
    assert one.dtype == torch.float32 and torch.equal(one, fm.to_linear(as_float[:1], curve, 2.37))
    batch = fm.to_linear_levels(levels, curve, gammas)  # one table per sample (the batched GPU path)
    assert torch.equal(batch, fm.to_linear(as_float, curve, gammas))
    # a channels-last view (how synth hands decoded crops over) reads the same
    hwc = levels[:1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(fm.to_linear_levels(hwc, curve, 2.37), one)


def test_jpeg_of_uint8_levels_is_the_float_form_quantised():
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    levels = (x * 255).round().to(torch.uint8)
    out = fm.jpeg(levels, [30, 95])
    assert out.dtype == torch.uint8 and out.shape == levels.shape
    assert torch.equal(out, (fm.jpeg(levels.float() / 255, [30, 95]) * 255).round().to(torch.uint8))
