"""benchmarks/lkpn_reach.py: its usage errors and its with-the-answer filter bound."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lkpn_reach.py"


def _module():
    spec = importlib.util.spec_from_file_location("lkpn_reach", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--eval", "held_out"], "--eval held_out: expected NAME=DIR"),
    (["--eval", "h=pairs", "--loss", "mse", "--psnr-cap", "40"], "--psnr-cap: applies to --loss psnr only"),
])
def test_bad_arguments_are_one_line_usage_errors(args, message):
    result = subprocess.run([sys.executable, str(SCRIPT), "--train", "pairs", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(message)


def test_oracle_filter_undoes_a_shift_it_is_fitted_to():
    """A one-pixel shift of noise is a 5×5 filter: fitted against the sharp image, it is largely undone (the
    wrapped column, which no filter over reflect padding reproduces, keeps it from being exact)."""
    reach = _module()
    sharp = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    blurry = torch.roll(sharp, shifts=1, dims=-1)
    restored = reach.oracle_linear_filter(sharp, blurry, 5)
    inner = (..., slice(3, -3), slice(3, -3))
    assert reach.psnr(blurry[inner], sharp[inner]) < 10
    assert reach.psnr(restored[inner], sharp[inner]) > 30
