"""Element-wise Adaptive Convolution (EAC) as a ``torch.library`` custom op.

    out[b, c, y, x] = Σ_{i,j} kernel[b, g·k² + i·k + j, y, x] · input[b, c, y+i−p, x+j−p]

with ``g = c // (C // G)``, ``p = (k − 1) // 2``, zero padding, stride 1, correlation (no flip), no
bias (DESIGN.md §1 "EAC exactly"; the layout of the released LKPN output).

Three ops share the namespace ``deblurdiff``:

- ``deblurdiff::eac(input, kernel, kernel_size)``            the forward
- ``deblurdiff::eac_grad_input(grad_out, kernel, kernel_size)`` d input, the adjoint of EAC in input
- ``deblurdiff::eac_grad_kernel(grad_out, input, kernel_size, groups)`` d kernel

EAC is bilinear in (input, kernel), so the gradient ops are themselves EACs in disguise and their
gradients are expressed with the same three ops (double backward works, e.g. for gradgradcheck).

The schemas are defined here, once. The compiled kernels register against them from C++
(``TORCH_LIBRARY_IMPL(deblurdiff, CPU|CUDA, ...)`` in ``csrc/``), so once built a call goes from the
dispatcher straight to C++; when a build failed, ``_build`` registers the PyTorch fallback for that
device instead. Which one runs is decided once per device type, on first use (``_build.backend``):
:func:`eac` asks for it before dispatching, and the ``CompositeExplicitAutograd`` kernel below
covers a first call that comes straight through ``torch.ops`` (a compiled graph, ``opcheck``).
``register_fake`` gives shapes to ``torch.compile`` / FakeTensor tracing.
"""

from __future__ import annotations

import torch

from deblurdiff.ops import _build

__all__ = ["eac", "eac_backend", "check_eac_inputs"]

_EAC = "deblurdiff::eac"
_GRAD_INPUT = "deblurdiff::eac_grad_input"
_GRAD_KERNEL = "deblurdiff::eac_grad_kernel"
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- validation
def check_eac_inputs(input: torch.Tensor, kernel: torch.Tensor, kernel_size: int) -> int:
    """Raise a ``ValueError``/``TypeError`` naming what was expected and what was given; return G."""
    if not isinstance(input, torch.Tensor) or not isinstance(kernel, torch.Tensor):
        raise TypeError(f"eac: expected input and kernel to be tensors, got "
                        f"{type(input).__name__} and {type(kernel).__name__}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"eac: expected kernel_size to be an int, got {type(kernel_size).__name__}")
    k = kernel_size
    if k <= 0 or k % 2 == 0:
        raise ValueError(f"eac: expected kernel_size to be a positive odd int, got {k}")
    if input.dim() != 4:
        raise ValueError(f"eac: expected input of shape (B, C, H, W), got {input.dim()}-D shape "
                         f"{tuple(input.shape)}")
    if kernel.dim() != 4:
        raise ValueError(f"eac: expected kernel of shape (B, G·k², H, W), got {kernel.dim()}-D shape "
                         f"{tuple(kernel.shape)}")
    b, c, h, w = input.shape
    kb, kc, kh, kw = kernel.shape
    if kb != b:
        raise ValueError(f"eac: expected kernel batch {b} (input batch), got {kb}")
    if (kh, kw) != (h, w):
        raise ValueError(f"eac: expected kernel spatial size {(h, w)} (input's), got {(kh, kw)}")
    groups = kc // (k * k)
    if kc == 0 or kc % (k * k) != 0 or c % groups != 0:
        raise ValueError(f"eac: expected kernel channels G·k² = G·{k * k} with G dividing C={c} "
                         f"(e.g. {c * k * k} for G=C), got {kc}")
    if input.device != kernel.device:
        raise ValueError(f"eac: expected input and kernel on one device, got {input.device} and "
                         f"{kernel.device}")
    if input.dtype != kernel.dtype and not _autocast_enabled(input.device.type):
        raise ValueError(f"eac: expected input and kernel of one dtype, got {input.dtype} and "
                         f"{kernel.dtype}")
    if input.dtype not in _DTYPES:
        raise ValueError(f"eac: expected a floating dtype (float64, float32, float16, bfloat16), "
                         f"got {input.dtype}")
    if input.device.type not in ("cpu", "cuda"):
        raise ValueError(f"eac: expected a cpu or cuda device, got {input.device}")
    return groups


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older torch without the device_type argument, or odd devices
        return False


# ----------------------------------------------------------------------------- public API
def eac(input: torch.Tensor, kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Apply per-pixel kernels: ``out[b,c,y,x] = Σ_ij kernel[b, g·k²+i·k+j, y, x] · input[b, c, y+i−p, x+j−p]``.

    Args:
        input: ``(B, C, H, W)`` float tensor (``z_b`` in DeblurDiff).
        kernel: ``(B, G·k², H, W)``, same dtype and device, ``G`` dividing ``C``; channel ``c`` uses
            group ``c // (C // G)`` and tap ``i·k + j`` (row-major) weighs offset ``(i − p, j − p)``.
        kernel_size: odd ``k``; ``p = (k − 1) // 2`` and out-of-range reads are zero.

    Returns:
        ``(B, C, H, W)`` tensor, differentiable in ``input`` and ``kernel``. The residual
        ``ẑ = EAC(z_b, K) + z_b`` belongs to the caller (LKPN), not to this op.

    Example:
        >>> z_b = torch.randn(1, 4, 8, 8)
        >>> kernel = torch.zeros(1, 4 * 25, 8, 8); kernel[:, 12::25] = 1  # centre tap: identity
        >>> torch.equal(eac(z_b, kernel, 5), z_b)
        True
    """
    check_eac_inputs(input, kernel, kernel_size)
    if not torch.compiler.is_compiling():  # a compiled graph reaches the kernels through the dispatcher
        _build.backend(input.device.type)  # built and registered on the first call (cached after)
    return torch.ops.deblurdiff.eac(input, kernel, kernel_size)


def eac_backend(device: torch.device | str) -> str:
    """Name the EAC implementation that runs on ``device``: ``"cpu"`` / ``"cuda"`` (compiled kernels)
    or ``"cpu-torch"`` / ``"cuda-torch"`` (the PyTorch fallback, after a failed build that was
    logged and warned about, or when ``DEBLURDIFF_EAC_BACKEND=torch``). Builds on first call."""
    return _build.backend(torch.device(device).type).name


# ----------------------------------------------------------------------------- op definitions
torch.library.define(_EAC, "(Tensor input, Tensor kernel, int kernel_size) -> Tensor")
torch.library.define(_GRAD_INPUT, "(Tensor grad_out, Tensor kernel, int kernel_size) -> Tensor")
torch.library.define(_GRAD_KERNEL, "(Tensor grad_out, Tensor input, int kernel_size, int groups) -> Tensor")


# First use on a device type only: no CPU/CUDA kernel is registered yet, so the dispatcher falls
# through to these. They build (or load) the compiled kernels, or register the fallback, for the
# device, then dispatch again, now to that device's own kernel. Later calls never come here.
def _first_call(op_name: str, device_type: str, *args):
    _build.backend(device_type)
    if not _build.has_kernel(op_name, device_type):
        raise RuntimeError(f"{op_name}: no kernel is registered for {device_type} after loading the backend")
    return getattr(torch.ops.deblurdiff, op_name.split("::")[1])(*args)


@torch.library.impl(_EAC, "CompositeExplicitAutograd")
def _eac_first_call(input, kernel, kernel_size):
    return _first_call(_EAC, input.device.type, input, kernel, kernel_size)


@torch.library.impl(_GRAD_INPUT, "CompositeExplicitAutograd")
def _grad_input_first_call(grad_out, kernel, kernel_size):
    return _first_call(_GRAD_INPUT, grad_out.device.type, grad_out, kernel, kernel_size)


@torch.library.impl(_GRAD_KERNEL, "CompositeExplicitAutograd")
def _grad_kernel_first_call(grad_out, input, kernel_size, groups):
    return _first_call(_GRAD_KERNEL, input.device.type, grad_out, input, kernel_size, groups)


@torch.library.register_fake(_EAC)
def _eac_fake(input, kernel, kernel_size):
    check_eac_inputs(input, kernel, kernel_size)
    return input.new_empty(input.shape)


@torch.library.register_fake(_GRAD_INPUT)
def _grad_input_fake(grad_out, kernel, kernel_size):
    return grad_out.new_empty(grad_out.shape)


@torch.library.register_fake(_GRAD_KERNEL)
def _grad_kernel_fake(grad_out, input, kernel_size, groups):
    b, _, h, w = input.shape
    return input.new_empty((b, groups * kernel_size * kernel_size, h, w))


# ----------------------------------------------------------------------------- autograd
# EAC(x, K) is bilinear; with <·,·> the sum of elementwise products:
#   <EAC(x, K), g> = <x, grad_input(g, K)> = <K, grad_kernel(g, x)>
# which gives every first and second derivative below.
def _eac_setup(ctx, inputs, output):
    input, kernel, kernel_size = inputs
    ctx.kernel_size = kernel_size
    ctx.groups = kernel.shape[1] // (kernel_size * kernel_size)
    # Keep only what the requested gradients need (d input needs K, d kernel needs x).
    ctx.save_for_backward(input if ctx.needs_input_grad[1] else None,
                          kernel if ctx.needs_input_grad[0] else None)


def _eac_backward(ctx, grad):
    input, kernel = ctx.saved_tensors
    k = ctx.kernel_size
    d_input = torch.ops.deblurdiff.eac_grad_input(grad, kernel, k) if ctx.needs_input_grad[0] else None
    d_kernel = (torch.ops.deblurdiff.eac_grad_kernel(grad, input, k, ctx.groups)
                if ctx.needs_input_grad[1] else None)
    return d_input, d_kernel, None


def _grad_input_setup(ctx, inputs, output):
    grad_out, kernel, kernel_size = inputs
    ctx.kernel_size = kernel_size
    ctx.groups = kernel.shape[1] // (kernel_size * kernel_size)
    ctx.save_for_backward(grad_out, kernel)


def _grad_input_backward(ctx, u):
    # grad_input(g, K) is the adjoint of EAC(·, K): d g = EAC(u, K); d K = grad_kernel(g, u).
    grad_out, kernel = ctx.saved_tensors
    k = ctx.kernel_size
    d_grad = torch.ops.deblurdiff.eac(u, kernel, k) if ctx.needs_input_grad[0] else None
    d_kernel = (torch.ops.deblurdiff.eac_grad_kernel(grad_out, u, k, ctx.groups)
                if ctx.needs_input_grad[1] else None)
    return d_grad, d_kernel, None


def _grad_kernel_setup(ctx, inputs, output):
    grad_out, input, kernel_size, groups = inputs
    ctx.kernel_size = kernel_size
    ctx.save_for_backward(grad_out, input)


def _grad_kernel_backward(ctx, v):
    # <grad_kernel(g, x), V> = <g, EAC(x, V)> = <x, grad_input(g, V)>.
    grad_out, input = ctx.saved_tensors
    k = ctx.kernel_size
    d_grad = torch.ops.deblurdiff.eac(input, v, k) if ctx.needs_input_grad[0] else None
    d_input = torch.ops.deblurdiff.eac_grad_input(grad_out, v, k) if ctx.needs_input_grad[1] else None
    return d_grad, d_input, None, None


torch.library.register_autograd(_EAC, _eac_backward, setup_context=_eac_setup)
# Under torch.autocast both operands run in float32 (the op accumulates in float32 anyway), so an
# autocast bf16 kernel K from the LKPN meets a float32 z_b without a dtype error; gradients flow back
# to each operand in its own dtype.
for _device_type in ("cpu", "cuda"):
    torch.library.register_autocast(_EAC, _device_type, torch.float32)
torch.library.register_autograd(_GRAD_INPUT, _grad_input_backward, setup_context=_grad_input_setup)
torch.library.register_autograd(_GRAD_KERNEL, _grad_kernel_backward, setup_context=_grad_kernel_setup)
