"""Build, load and pick the EAC implementation for a device type (once per process).

The compiled kernels are JIT-built with ``torch.utils.cpp_extension.load`` on first use and cached
by torch in its extensions directory (``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``),
so only the first process on a machine pays the build (tens of seconds); later processes just load
the ``.so``. Concurrent first builds (Ray workers) are serialised by torch's file lock.

If a build fails, the pure-PyTorch path runs instead and says so: a ``RuntimeWarning`` plus a log
line carrying the compiler's error, and :func:`deblurdiff.ops.eac_backend` returns ``"cpu-torch"`` /
``"cuda-torch"`` rather than ``"cpu"`` / ``"cuda"``. Set ``DEBLURDIFF_EAC_BACKEND=torch`` to choose
the PyTorch path on purpose (debugging, a machine without a compiler).
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from deblurdiff.ops import _torch_impl

logger = logging.getLogger("deblurdiff.ops")

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCE = CSRC / "eac_cpu.cpp"
CUDA_SOURCES = (CSRC / "eac_cuda.cpp", CSRC / "eac_cuda_kernels.cu")  # torch glue, kernels
BACKEND_ENV = "DEBLURDIFF_EAC_BACKEND"  # "auto" (default) or "torch"
# torch's build lock of a process killed mid-build (e.g. a test timeout) is never removed and makes
# every later process wait forever; a lock older than this is taken to be such a leftover.
STALE_LOCK_S = 15 * 60


@dataclass(frozen=True)
class Backend:
    """The three kernels that run on one device type, and what they are called."""

    name: str  # "cpu" | "cuda" | "cpu-torch" | "cuda-torch"
    forward: Callable  # (input, kernel, k) -> out
    grad_input: Callable  # (grad_out, kernel, k) -> grad_input
    grad_kernel: Callable  # (grad_out, input, k, groups) -> grad_kernel
    reason: str = ""  # why the PyTorch path runs, when it does


_lock = threading.Lock()
_backends: dict[str, Backend] = {}


def backend(device_type: str) -> Backend:
    """The implementation for ``device_type`` ("cpu" or "cuda"), building it on first use."""
    found = _backends.get(device_type)
    if found is not None:
        return found
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("eac: no CUDA device is available here, so nothing runs on 'cuda'")
    with _lock:  # one build per process, even when several threads hit the op at once
        if device_type not in _backends:
            _backends[device_type] = _select(device_type)
        return _backends[device_type]


def _torch_backend(device_type: str, reason: str) -> Backend:
    return Backend(f"{device_type}-torch", _torch_impl.forward, _torch_impl.grad_input,
                   _torch_impl.grad_kernel, reason)


def _select(device_type: str) -> Backend:
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"eac: expected a cpu or cuda device, got {device_type!r}")
    choice = os.environ.get(BACKEND_ENV, "auto").strip().lower()
    if choice == "torch":
        logger.info("EAC on %s: PyTorch path chosen by %s=torch", device_type, BACKEND_ENV)
        return _torch_backend(device_type, f"chosen by {BACKEND_ENV}=torch")
    if choice not in ("", "auto"):
        raise ValueError(f"{BACKEND_ENV}: expected 'auto' or 'torch', got {choice!r}")
    build = _build_cpu if device_type == "cpu" else _build_cuda
    try:
        started = time.perf_counter()
        ops = build()
        logger.info("EAC on %s: compiled kernels ready in %.1fs", device_type, time.perf_counter() - started)
        return Backend(device_type, ops.eac_forward, ops.eac_grad_input, ops.eac_grad_kernel)
    except Exception as err:  # noqa: BLE001 - any build/load failure falls back, loudly
        reason = f"{type(err).__name__}: {err}".strip()
        message = (f"deblurdiff.ops.eac: building the {device_type.upper()} kernels failed, so the slower "
                   f"pure-PyTorch path ('{device_type}-torch') runs on {device_type}. Reason: {reason}")
        logger.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        return _torch_backend(device_type, reason)


def _tag(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")


def _build_directory(name: str) -> str:
    """torch's usual place (``$TORCH_EXTENSIONS_DIR`` or ~/.cache/torch_extensions/pyXY), made
    explicit so a stale build lock in it can be cleared."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        cpp_extension.get_default_build_root(), f"py{sys.version_info.major}{sys.version_info.minor}")
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    lock = path / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
        if age > STALE_LOCK_S:
            logger.warning("EAC: removing a stale build lock %s (%.0f min old, left by a killed build)",
                           lock, age / 60)
            lock.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    return str(path)


def _ensure_ninja_on_path() -> None:
    """cpp_extension runs the ``ninja`` executable from PATH. The ``ninja`` wheel (a dependency)
    puts it in the environment's scripts dir, which is not on PATH when the venv is not activated
    or the wheels were installed with ``pip --target``: add that dir."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return  # cpp_extension then raises its own "Ninja is required" error (-> loud fallback)
    package_dir = Path(ninja.__file__).resolve().parent
    for candidate in (getattr(ninja, "BIN_DIR", ""), package_dir.parent / "bin", package_dir / "data" / "bin"):
        if candidate and (Path(candidate) / "ninja").is_file():
            os.environ["PATH"] = f"{candidate}{os.pathsep}{os.environ.get('PATH', '')}"
            return


def _x86_flags() -> list[str]:
    """SIMD flags for this CPU (the build is per machine; the name below keys the cache on them)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []  # aarch64 & co: -O3 already vectorises with the baseline ISA (NEON)
    capability = torch.backends.cpu.get_cpu_capability()
    return ["-mavx2", "-mfma", "-mf16c"] if capability in ("AVX2", "AVX512") else []


def _build_cpu():
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    arch = _x86_flags()
    name = f"deblurdiff_eac_cpu_t{_tag(torch.__version__)}_{'avx2' if arch else 'base'}"
    logger.info("EAC: loading/building the CPU extension %s (first build takes ~30s)", name)
    cpp_extension.load(
        name=name,
        sources=[str(CPU_SOURCE)],
        extra_cflags=["-O3", "-fopenmp", *arch],  # -fopenmp: at::parallel_for uses torch's OpenMP pool
        extra_ldflags=["-fopenmp"],
        build_directory=_build_directory(name),
        is_python_module=False,  # the .so registers torch.ops.deblurdiff_cpu.* (no pybind)
        verbose=False,
    )
    return torch.ops.deblurdiff_cpu


def _build_cuda(verbose: bool = False, need_device: bool = True):
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise RuntimeError("this torch build has no CUDA support")
    if need_device and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available in this torch build / on this machine")
    if cpp_extension.CUDA_HOME is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    _ensure_ninja_on_path()
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        if not torch.cuda.is_available():
            raise RuntimeError("no GPU to take the architecture from: set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0')")
        # Build for the device that is here (sm_90 on Hopper) unless the user chose the archs.
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    arch_tag = _tag(os.environ["TORCH_CUDA_ARCH_LIST"])
    name = f"deblurdiff_eac_cuda_t{_tag(torch.__version__)}_sm{arch_tag}"
    logger.info("EAC: loading/building the CUDA extension %s for %s", name, os.environ["TORCH_CUDA_ARCH_LIST"])
    cpp_extension.load(
        name=name,
        sources=[str(path) for path in CUDA_SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=_build_directory(name),
        is_python_module=False,  # registers torch.ops.deblurdiff_cuda.*
        verbose=verbose,
    )
    return torch.ops.deblurdiff_cuda


def build_extensions(cuda: bool | None = None, verbose: bool = False) -> list[str]:
    """Build (or load from the cache) the compiled kernels ahead of time, e.g. at image build time.

    Unlike first use, a failure raises instead of falling back. ``cuda``: also build the CUDA
    kernels (None: when a CUDA toolkit is present). Without a GPU (``docker build``), the CUDA
    architectures come from ``TORCH_CUDA_ARCH_LIST``; keep the same value at run time so the
    runtime finds this build under the same name. Returns the names of what was built.
    """
    from torch.utils import cpp_extension

    built = []
    _build_cpu()
    built.append("cpu")
    if cuda is None:
        cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if cuda:
        _build_cuda(verbose=verbose, need_device=False)
        built.append("cuda")
    return built
