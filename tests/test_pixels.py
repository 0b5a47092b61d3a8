"""uint8 <-> float pixel values: one rounding rule for numpy and torch, exact round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deblurdiff.pixels import to_float, to_uint8


def test_every_level_survives_the_round_trip():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)  # (H, W, 3)
    assert np.array_equal(to_uint8(to_float(levels)), levels)
    assert torch.equal(to_uint8(to_float(torch.from_numpy(levels))), torch.from_numpy(levels))


def test_numpy_and_torch_quantise_alike_and_clamp():
    values = np.array([-0.2, 0.0, 0.3 / 255, 0.5 / 255, 0.7 / 255, 1.5 / 255, 0.5, 1.0, 1.7], dtype=np.float32)
    expected = np.array([0, 0, 0, 0, 1, 2, 128, 255, 255], dtype=np.uint8)  # ties go to the even level
    assert np.array_equal(to_uint8(values), expected)
    assert np.array_equal(to_uint8(torch.from_numpy(values)).numpy(), expected)


def test_layout_kind_and_dtype_are_kept():
    chw = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)
    assert to_float(chw).shape == (2, 3, 4, 5) and to_float(chw).dtype == torch.float32
    assert to_float(chw, dtype=torch.float64).dtype == torch.float64
    assert to_float(np.zeros((4, 5, 3), np.uint8), dtype=np.float64).dtype == np.float64


def test_float_input_to_to_float_is_refused():
    with pytest.raises(ValueError, match="expected uint8 pixels, got float32"):
        to_float(np.zeros((2, 2, 3), np.float32))
