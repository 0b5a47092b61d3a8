"""Build, load and pick the EAC implementation for a device type (once per process).

The compiled kernels are JIT-built with ``torch.utils.cpp_extension.load`` on first use and cached
by torch in its extensions directory (``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``),
so only the first process on a machine pays the build (tens of seconds); later processes just load
the ``.so``. Concurrent first builds (Ray workers) are serialised by torch's file lock.

If a build fails, the pure-PyTorch path runs instead and says so: a ``RuntimeWarning`` plus a log
line carrying the compiler's error, and :func:`deblurdiff.ops.eac_backend` returns ``"cpu-torch"`` /
``"cuda-torch"`` rather than ``"cpu"`` / ``"cuda"``. Set ``DEBLURDIFF_EAC_BACKEND=torch`` to choose
the PyTorch path on purpose (debugging, a machine without a compiler).

Registration: the op schemas live in ``eac_op.py``. Loading a compiled library registers its C++
kernels against them for its device (``TORCH_LIBRARY_IMPL(deblurdiff, CPU|CUDA, ...)``); the
fallback registers the ``_torch_impl`` functions for that device through a ``torch.library.Library``
that is dropped again (bringing the compiled kernels back) if the compiled backend is chosen later.
The build changes no process-wide setting: ``ninja``'s folder is put on ``PATH`` only while
``cpp_extension`` runs (it looks the program up there), and the CUDA architectures are passed as
compiler flags instead of through ``TORCH_CUDA_ARCH_LIST``.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    """Which EAC kernels run on one device type."""

    device_type: str  # "cpu" | "cuda"
    name: str  # "cpu" | "cuda" (compiled) | "cpu-torch" | "cuda-torch" (the PyTorch fallback)
    reason: str = ""  # why the PyTorch path runs, when it does

    @property
    def is_fallback(self) -> bool:
        return self.name.endswith("-torch")


_OPS = ("eac", "eac_grad_input", "eac_grad_kernel")
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_lock = threading.Lock()
_backends: dict[str, Backend] = {}
_fallbacks: dict[str, torch.library.Library] = {}  # device type -> the registration of _torch_impl


def backend(device_type: str) -> Backend:
    """The implementation for ``device_type`` ("cpu" or "cuda"), building it on first use."""
    found = _backends.get(device_type)
    if found is None:
        if device_type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("eac: no CUDA device is available here, so nothing runs on 'cuda'")
        with _lock:  # one build per process, even when several threads hit the op at once
            if device_type not in _backends:
                _backends[device_type] = _select(device_type)
            found = _backends[device_type]
    if found.is_fallback != (device_type in _fallbacks):  # the dispatcher runs another one: switch
        with _lock:
            _register_fallback(device_type, found.is_fallback)
    return found


def has_kernel(op_name: str, device_type: str) -> bool:
    """Does the dispatcher hold a ``device_type`` kernel for ``op_name`` ("deblurdiff::eac")?"""
    return torch._C._dispatch_has_kernel_for_dispatch_key(op_name, _DISPATCH_KEYS[device_type])


def _register_fallback(device_type: str, on: bool) -> None:
    """Register (``on``) or drop the ``_torch_impl`` kernels for ``device_type``. A compiled library
    loaded earlier stays registered beneath and runs again once the fallback is dropped."""
    if on and device_type not in _fallbacks:
        lib = torch.library.Library("deblurdiff", "IMPL")  # noqa: TOR901 - a device's kernels, not a schema
        key = _DISPATCH_KEYS[device_type]
        with warnings.catch_warnings():  # over a compiled library loaded before: overriding it is the point
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
            for op, impl in zip(_OPS, (_torch_impl.forward, _torch_impl.grad_input, _torch_impl.grad_kernel)):
                lib.impl(op, impl, key)
        _fallbacks[device_type] = lib
    elif not on and device_type in _fallbacks:
        _fallbacks.pop(device_type)._destroy()


def _torch_backend(device_type: str, reason: str) -> Backend:
    _register_fallback(device_type, True)
    return Backend(device_type, f"{device_type}-torch", reason)


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
        build()  # loading the library registers its kernels against deblurdiff::* for this device
        missing = [op for op in _OPS if not has_kernel(f"deblurdiff::{op}", device_type)]
        if missing:
            raise RuntimeError(f"the compiled library registered no {device_type} kernel for {', '.join(missing)}")
        logger.info("EAC on %s: compiled kernels ready in %.1fs", device_type, time.perf_counter() - started)
        _register_fallback(device_type, False)
        return Backend(device_type, device_type)
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


def _ninja_dir() -> str | None:
    """The folder of the ``ninja`` wheel's executable (a dependency), when ninja is not on PATH: the
    wheel puts it in the environment's scripts dir, which is not on PATH when the venv is not
    activated or the wheels were installed with ``pip --target``."""
    if shutil.which("ninja"):
        return None
    try:
        import ninja
    except ImportError:
        return None  # cpp_extension then raises its own "Ninja is required" error (-> loud fallback)
    package_dir = Path(ninja.__file__).resolve().parent
    for candidate in (getattr(ninja, "BIN_DIR", ""), package_dir.parent / "bin", package_dir / "data" / "bin"):
        if candidate and (Path(candidate) / "ninja").is_file():
            return str(candidate)
    return None


@contextmanager
def _ninja_on_path():
    """cpp_extension runs ``ninja`` from PATH: extend PATH for the build only, then restore it."""
    folder = _ninja_dir()
    if folder is None:
        yield
        return
    saved = os.environ.get("PATH")
    os.environ["PATH"] = f"{folder}{os.pathsep}{saved or ''}"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


def _x86_flags() -> list[str]:
    """SIMD flags for this CPU (the build is per machine; the name below keys the cache on them)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []  # aarch64 & co: -O3 already vectorises with the baseline ISA (NEON)
    capability = torch.backends.cpu.get_cpu_capability()
    return ["-mavx2", "-mfma", "-mf16c"] if capability in ("AVX2", "AVX512") else []


def _say_if_compiling(name: str, build_directory: str, what: str, duration: str) -> None:
    """One line at the default log level before a compile that will take a while (the first use on a
    machine), so a progress bar sitting at 0 is explained; loading the cached build says nothing."""
    if (Path(build_directory) / f"{name}.so").is_file():
        logger.info("EAC: loading the cached %s extension %s", what, build_directory)
        return
    logger.warning("EAC: compiling the %s kernels (%s, once per machine: later runs load the cached build "
                   "from %s)", what, duration, build_directory)


def _build_cpu():
    from torch.utils import cpp_extension

    arch = _x86_flags()
    name = f"deblurdiff_eac_cpu_t{_tag(torch.__version__)}_{'avx2' if arch else 'base'}"
    build_directory = _build_directory(name)
    _say_if_compiling(name, build_directory, "CPU", "30-80 s")
    with _ninja_on_path():
        cpp_extension.load(
            name=name,
            sources=[str(CPU_SOURCE)],
            extra_cflags=["-O3", "-fopenmp", *arch],  # -fopenmp: at::parallel_for uses torch's OpenMP pool
            extra_ldflags=["-fopenmp"],
            build_directory=build_directory,
            is_python_module=False,  # the .so registers the CPU kernels of deblurdiff::* (no pybind)
            verbose=False,
        )


def _build_cuda(verbose: bool = False, need_device: bool = True):
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise RuntimeError("this torch build has no CUDA support")
    if need_device and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available in this torch build / on this machine")
    if cpp_extension.CUDA_HOME is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")  # the user's choice, read by cpp_extension itself
    arch_flags: list[str] = []
    if not arch_list:
        if not torch.cuda.is_available():
            raise RuntimeError("no GPU to take the architecture from: set TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0')")
        # Build for the device that is here (sm_90 on Hopper). An "arch" flag of our own makes
        # cpp_extension add none from TORCH_CUDA_ARCH_LIST, so that variable is left alone.
        major, minor = torch.cuda.get_device_capability()
        arch_list = f"{major}.{minor}"
        arch_flags = [f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]
    name = f"deblurdiff_eac_cuda_t{_tag(torch.__version__)}_sm{_tag(arch_list)}"
    build_directory = _build_directory(name)
    _say_if_compiling(name, build_directory, f"CUDA ({arch_list})", "1-3 min")
    with _ninja_on_path():
        cpp_extension.load(
            name=name,
            sources=[str(path) for path in CUDA_SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "-lineinfo", *arch_flags],
            build_directory=build_directory,
            is_python_module=False,  # registers the CUDA kernels of deblurdiff::*
            verbose=verbose,
        )


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
