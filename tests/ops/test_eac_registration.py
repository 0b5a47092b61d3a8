"""How the EAC kernels are registered: one schema, the compiled CPU kernel straight under the
dispatcher (no Python hop per call), a fallback that steps aside again, no lasting PATH change."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

from deblurdiff.ops import _build, eac, eac_backend


def _cpu_kernel_source() -> str:
    """Where the dispatcher's active CPU kernel of deblurdiff::eac was registered."""
    for line in torch._C._dispatch_dump("deblurdiff::eac").splitlines():
        if line.startswith("CPU:"):
            return line
    return ""


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_compiled_cpu_kernel_is_the_dispatchers_and_survives_a_fallback(monkeypatch):
    assert eac_backend("cpu") == "cpu"
    assert "eac_cpu.cpp" in _cpu_kernel_source()  # C++ registered against the Python-defined schema

    monkeypatch.setattr(_build, "_backends", {})
    monkeypatch.setattr(_build, "_build_cpu", lambda: (_ for _ in ()).throw(RuntimeError("no compiler")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert eac_backend("cpu") == "cpu-torch"
    assert "_build.py" in _cpu_kernel_source()  # the PyTorch fallback runs now

    monkeypatch.undo()  # the compiled backend is the chosen one again ...
    x, kernel = torch.randn(1, 2, 5, 5), torch.randn(1, 2 * 9, 5, 5)
    eac(x, kernel, 3)
    assert eac_backend("cpu") == "cpu" and "eac_cpu.cpp" in _cpu_kernel_source()  # ... and runs again


def test_ninja_folder_is_on_path_only_during_the_build(monkeypatch, tmp_path):
    monkeypatch.setattr(_build, "_ninja_dir", lambda: str(tmp_path))
    before = os.environ.get("PATH")
    with _build._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == str(tmp_path)
    assert os.environ.get("PATH") == before
