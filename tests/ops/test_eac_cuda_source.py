"""The CUDA sources compile, on machines without a GPU too (CI): a syntax or type error in the
``.cu`` or its torch glue cannot land unseen. Runs where ``nvcc`` exists; the numerics of the CUDA
kernels are checked by the ``gpu``-marked tests in test_eac.py on a CUDA machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

from deblurdiff.ops._build import CSRC

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found: the CUDA toolkit is not installed here")


def _torch_includes() -> list[str]:
    flags = [f"-I{path}" for path in include_paths()]
    # CPU-only torch wheels ship c10/cuda headers without their generated config header.
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


def _cuda_include() -> Path | None:
    """The toolkit's include dir (nvcc may be a wrapper script, so also try the usual homes)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             str(Path(NVCC).resolve().parent.parent), "/usr/local/cuda"]
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"


def test_cuda_kernels_compile_with_nvcc(tmp_path):
    # Hopper (sm_90) code, as the JIT build makes on an H100; ptxas runs too.
    _run([NVCC, "-c", str(CSRC / "eac_cuda_kernels.cu"), "-o", str(tmp_path / "eac_cuda_kernels.o"),
          *_torch_includes(), "-std=c++17", *COMMON_NVCC_FLAGS, "-Xcompiler", "-fPIC",
          "-gencode", "arch=compute_90,code=sm_90", "-O3"])


def test_cuda_glue_compiles_against_torch_and_cuda_headers():
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    cuda_include = _cuda_include()
    if cuda_include is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found; set CUDA_HOME")
    _run([cxx, "-fsyntax-only", "-std=c++20", *_torch_includes(), f"-I{cuda_include}",
          str(CSRC / "eac_cuda.cpp")])
