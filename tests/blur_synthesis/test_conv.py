"""FFT blur == direct convolution (interior and borders), odd sizes, smooth FFT lengths, masks."""

import pytest
import torch
import torch.nn.functional as F
from kornia.filters import filter2d

from deblurdiff.blur_synthesis.conv import fft_blur, region_masks, smooth_size


def _direct(x, psf, border="reflect"):
    """Reference: pad, then F.conv2d with the flipped PSF (true convolution)."""
    k = psf.shape[-1]
    xp = F.pad(x, (k // 2,) * 4, mode=border)
    c = x.shape[1]
    return F.conv2d(xp, psf.flip(-2, -1)[None, None].expand(c, 1, k, k).to(x.dtype), groups=c)


@pytest.mark.parametrize("shape", [(97, 131), (64, 64), (131, 97)])
@pytest.mark.parametrize("k", [1, 7, 31])
def test_fft_blur_equals_direct_convolution(shape, k):
    g = torch.Generator().manual_seed(k)
    x = torch.rand(2, 3, *shape, generator=g, dtype=torch.float64)
    psf = torch.rand(2, 1, k, k, generator=g, dtype=torch.float64)
    psf = psf / psf.sum((-2, -1), keepdim=True)
    out = fft_blur(x, psf)
    assert out.shape == x.shape
    for i in range(2):
        torch.testing.assert_close(out[i : i + 1], _direct(x[i : i + 1], psf[i, 0]), atol=1e-10, rtol=0)


def test_fft_blur_matches_kornia_filter2d_convolution():
    x = torch.rand(1, 3, 40, 57, dtype=torch.float64)
    psf = torch.rand(1, 1, 9, 9, dtype=torch.float64)
    psf /= psf.sum()
    ref = filter2d(x, psf[:, 0], border_type="reflect", behaviour="conv")
    torch.testing.assert_close(fft_blur(x, psf), ref, atol=1e-10, rtol=0)


def test_border_modes_and_small_images_fall_back():
    x = torch.rand(1, 3, 20, 30, dtype=torch.float64)
    psf = torch.rand(1, 1, 11, 11, dtype=torch.float64)
    psf /= psf.sum()
    for border in ("replicate", "circular"):
        torch.testing.assert_close(fft_blur(x, psf, border=border), _direct(x, psf[0, 0], border), atol=1e-10, rtol=0)
    # a kernel wider than the image: reflect cannot pad that far; replicate is used instead
    big = torch.full((1, 1, 51, 51), 1 / 51**2, dtype=torch.float64)
    torch.testing.assert_close(fft_blur(x, big), _direct(x, big[0, 0], "replicate"), atol=1e-10, rtol=0)


def test_non_contiguous_and_float32_input():
    x = torch.rand(1, 64, 48, 3).permute(0, 3, 1, 2)  # non-contiguous (B, C, H, W)
    psf = torch.rand(1, 1, 15, 15)
    psf /= psf.sum()
    out = fft_blur(x, psf)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _direct(x.contiguous().double(), psf[0, 0].double()).float(), atol=1e-5, rtol=0)


def test_smooth_size():
    assert smooth_size(638) == 640 and smooth_size(526) == 540 and smooth_size(1) == 2 and smooth_size(656) == 720
    for n in range(1, 300):
        m = smooth_size(n)
        assert m >= n and m % 2 == 0
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
        assert all(smooth_size(j) == m for j in range(n, m + 1))  # the smallest such


def test_spatially_varying_blur_is_the_sum_of_blurred_masked_parts():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 50, 70, dtype=torch.float64)
    psfs = torch.rand(1, 2, 9, 9, dtype=torch.float64)
    psfs /= psfs.sum((-2, -1), keepdim=True)
    masks = region_masks(torch.tensor([[[0.2, 0.5], [0.8, 0.5]]]), torch.tensor([0.05]), 50, 70).double()
    out = fft_blur(x, psfs, masks)
    # efficient filter flow: each masked part of the sharp image blurred by its PSF, then summed
    ref = _direct(masks[:, :1] * x, psfs[0, 0]) + _direct(masks[:, 1:] * x, psfs[0, 1])
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="need masks"):
        fft_blur(x, psfs)


def test_region_masks_partition_smoothly():
    m = region_masks(torch.tensor([[[0.1, 0.1], [0.9, 0.2], [0.5, 0.9]]]), torch.tensor([0.05]), 120, 160)
    assert m.shape == (1, 3, 120, 160)
    assert (m >= 0).all() and torch.allclose(m.sum(1), torch.ones(1, 120, 160), atol=1e-5)
    # every region owns part of the image, and the transitions are smooth (no hard seams)
    assert all(float((m[0, j] > 0.5).float().mean()) > 0.1 for j in range(3))
    step = max(float(m.diff(dim=-1).abs().max()), float(m.diff(dim=-2).abs().max()))
    assert step < 0.1
