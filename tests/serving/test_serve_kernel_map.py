"""The kernel-spread map's math (no Ray): identity -> 0, a shifted tap -> its distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deblurdiff.serving.kernel_map import kernel_spread, spread_to_rgb

K, C = 5, 3
P = (K - 1) // 2


def _residual(effective: torch.Tensor) -> torch.Tensor:
    """Residual K (what the LKPN outputs) for a wanted effective kernel δ + K; effective: (k, k)."""
    k = effective.clone()
    k[P, P] -= 1.0
    return k.reshape(1, 1, K * K, 1, 1).expand(2, C, K * K, 4, 6).reshape(2, C * K * K, 4, 6)


def test_zero_residual_is_the_identity_with_zero_spread():
    spread = kernel_spread(torch.zeros(2, C * K * K, 4, 6), K)
    assert spread.shape == (2, 4, 6) and np.allclose(spread, 0)


@pytest.mark.parametrize("tap, distance", [((0, 0), P * math.sqrt(2)), ((P, P + 1), 1.0), ((P - 2, P), 2.0)])
def test_a_single_shifted_tap_spreads_by_its_distance(tap, distance):
    effective = torch.zeros(K, K)
    effective[tap] = 1.0
    assert np.allclose(kernel_spread(_residual(effective), K), distance, atol=1e-5)


def test_box_kernel_spreads_by_the_rms_tap_distance():
    effective = torch.full((K, K), 1.0 / K**2)
    i, j = np.meshgrid(np.arange(K) - P, np.arange(K) - P, indexing="ij")
    assert np.allclose(kernel_spread(_residual(effective), K), math.sqrt((i**2 + j**2).mean()), atol=1e-5)


def test_colour_map_has_the_image_size_and_brightens_with_spread():
    spread = np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4)
    rgb = spread_to_rgb(spread, 40, 30, vmax=3.0)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    same = spread_to_rgb(spread, 4, 3, vmax=3.0).astype(int).sum(-1).ravel()
    assert (np.diff(same) > 0).all()  # monotone ramp: wider kernels are brighter
