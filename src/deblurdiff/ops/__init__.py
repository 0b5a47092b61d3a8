"""Element-wise Adaptive Convolution (EAC), DeblurDiff's per-pixel kernel op (DESIGN.md §1).

- :func:`eac` — ``eac(input, kernel, kernel_size)``, the ``deblurdiff::eac`` custom op (autograd,
  ``torch.compile``); compiled C++ (CPU, OpenMP + SIMD) and CUDA kernels built on first use.
- :func:`eac_backend` — which implementation runs on a device: ``"cpu"``, ``"cuda"``, or
  ``"cpu-torch"`` / ``"cuda-torch"`` when the build failed (a logged warning says why).
- :func:`build_extensions` — build the compiled kernels ahead of time (``infra/Dockerfile``); raises
  on failure instead of falling back.
- :mod:`deblurdiff.ops.reference` — the slow float64-friendly reference and the ``F.unfold``
  formulation (tests' ground truth, benchmark baseline).
"""

from deblurdiff.ops._build import build_extensions
from deblurdiff.ops.eac_op import check_eac_inputs, eac, eac_backend

__all__ = ["build_extensions", "eac", "eac_backend", "check_eac_inputs"]
