"""EAC op: the kornia-style template (smoke, shapes, reference, bad input, non-contiguous, gradcheck,
opcheck, torch.compile, half types) plus the build/fallback contract and CUDA-vs-CPU checks.

Ground truth is ``eac_reference`` (written from DESIGN.md §1) in float64. The first test to touch
the op builds the C++ extension once (~20-60 s on 2 cores); later runs load it from torch's cache.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from deblurdiff.ops import _build, _torch_impl, eac, eac_backend
from deblurdiff.ops.reference import eac_reference

# (B, C, G, H, W, k): odd sizes, images smaller than the kernel, groups 1 / 2 / C, k = 3 / 5 / 7,
# rows wide enough for the SIMD interior path (W − 2p ≥ 16) and narrow ones (border path only).
SHAPES = [
    (1, 4, 4, 8, 8, 5),
    (2, 4, 4, 13, 37, 5),
    (3, 6, 2, 9, 7, 3),
    (2, 4, 1, 17, 33, 7),
    (2, 4, 2, 21, 70, 3),
    (1, 4, 4, 3, 2, 5),  # smaller than the kernel
    (2, 2, 2, 1, 1, 7),  # one pixel
    (2, 3, 3, 6, 40, 7),
]


def _ids(shape):
    return "B{}C{}G{}_{}x{}_k{}".format(*shape)


def make_inputs(shape, dtype=torch.float64, device="cpu", seed=0):
    b, c, g, h, w, k = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    kernel = torch.randn(b, g * k * k, h, w, generator=gen, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), kernel.to(device=device, dtype=dtype), k


def reference_with_grads(x, kernel, k, grad_out):
    """Reference output and gradients, in float64 on the CPU."""
    x64 = x.detach().cpu().double().requires_grad_()
    k64 = kernel.detach().cpu().double().requires_grad_()
    out = eac_reference(x64, k64, k)
    out.backward(grad_out.detach().cpu().double())
    return out.detach(), x64.grad, k64.grad


def tolerances(dtype):
    # Half types: inputs are exact in the reference (same rounded values), so the error is the final
    # rounding of a float32 accumulation: relative ~2^-8 (bf16) / 2^-11 (fp16).
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-10),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
    }[dtype]


def has_compiler():
    return shutil.which("c++") is not None or shutil.which("g++") is not None


class TestEAC:
    def test_smoke(self, device, dtype):
        x, kernel, k = make_inputs((2, 4, 4, 8, 8, 5), dtype, device)
        out = eac(x, kernel, k)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device

    def test_identity_kernel_returns_input(self, device):
        # Only the centre tap set: EAC is the identity (the LKPN's zero-init state plus this = z_b).
        x, _, k = make_inputs((2, 4, 4, 9, 11, 5), torch.float32, device)
        kernel = torch.zeros(2, 4 * k * k, 9, 11, device=device)
        kernel[:, (k * k) // 2 :: k * k] = 1.0
        assert torch.equal(eac(x, kernel, k), x)

    def test_shift_kernel_is_correlation_with_zero_padding(self):
        # Tap (i, j) = (0, 2) of k=3 reads input (y−1, x+1): out[y, x] = in[y−1, x+1], zero outside.
        x = torch.arange(1, 13, dtype=torch.float32).view(1, 1, 3, 4)
        kernel = torch.zeros(1, 9, 3, 4)
        kernel[:, 0 * 3 + 2] = 1.0
        expected = torch.zeros_like(x)
        expected[..., 1:, :3] = x[..., :2, 1:]
        assert torch.equal(eac(x, kernel, 3), expected)

    @pytest.mark.parametrize("shape", SHAPES, ids=_ids)
    def test_matches_reference(self, device, dtype, shape):
        x, kernel, k = make_inputs(shape, dtype, device)
        out = eac(x, kernel, k)
        expected = eac_reference(x.cpu().double(), kernel.cpu().double(), k)
        torch.testing.assert_close(out.cpu().double(), expected, **tolerances(dtype))

    @pytest.mark.parametrize("shape", SHAPES, ids=_ids)
    def test_gradients_match_reference(self, device, shape):
        x, kernel, k = make_inputs(shape, torch.float64, device)
        x.requires_grad_()
        kernel.requires_grad_()
        grad_out = torch.randn_like(x)
        eac(x, kernel, k).backward(grad_out)
        _, gx, gk = reference_with_grads(x, kernel, k, grad_out)
        torch.testing.assert_close(x.grad.cpu(), gx, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(kernel.grad.cpu(), gk, rtol=1e-10, atol=1e-10)

    @pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
    def test_half_types_accumulate_in_float32(self, device, half):
        x, kernel, k = make_inputs((2, 4, 4, 19, 41, 5), half, device)
        x.requires_grad_()
        kernel.requires_grad_()
        grad_out = torch.randn(x.shape, dtype=torch.float64).to(device=device, dtype=half)
        out = eac(x, kernel, k)
        out.backward(grad_out)
        assert out.dtype == x.grad.dtype == kernel.grad.dtype == half
        ref, gx, gk = reference_with_grads(x, kernel, k, grad_out)  # same rounded inputs, float64
        tol = tolerances(half)
        torch.testing.assert_close(out.cpu().double(), ref, **tol)
        torch.testing.assert_close(x.grad.cpu().double(), gx, **tol)
        torch.testing.assert_close(kernel.grad.cpu().double(), gk, **tol)

    @pytest.mark.parametrize(("half", "big"), [(torch.bfloat16, 256.0), (torch.float16, 2048.0)], ids=str)
    def test_half_types_do_not_accumulate_in_half(self, device, half, big):
        # One tap of `big` then 48 taps of 1: in a half-precision running sum every +1 rounds away
        # (big + 1 is a tie that rounds back to big), float32 accumulation gives big + 48 exactly.
        k = 7
        x = torch.ones(1, 1, 9, 9, device=device, dtype=half)
        kernel = torch.ones(1, k * k, 9, 9, device=device, dtype=half)
        kernel[:, 0] = big
        assert eac(x, kernel, k)[0, 0, 4, 4].item() == big + 48

    def test_autocast_mixed_dtypes_run_in_float32(self, device):
        x, kernel, k = make_inputs((2, 4, 4, 9, 10, 5), torch.float32, device)
        x.requires_grad_()
        kernel_bf16 = kernel.to(torch.bfloat16).requires_grad_()  # e.g. the LKPN's autocast output
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = eac(x, kernel_bf16, k)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, eac(x.detach(), kernel_bf16.detach().float(), k))
        out.sum().backward()
        assert x.grad.dtype == torch.float32 and kernel_bf16.grad.dtype == torch.bfloat16
        with pytest.raises(ValueError, match="one dtype"):  # outside autocast: still an error
            eac(x, kernel_bf16, k)

    def test_noncontiguous_inputs(self, device, dtype):
        b, c, h, w, k = 2, 4, 11, 23, 5
        x = torch.randn(b, h, w, c, dtype=dtype, device=device).permute(0, 3, 1, 2)  # NHWC view
        kernel = torch.randn(b, c * k * k, h, 2 * w, dtype=dtype, device=device)[..., ::2]  # strided
        assert not x.is_contiguous() and not kernel.is_contiguous()
        x.requires_grad_()
        kernel.requires_grad_()
        out = eac(x, kernel, k)
        out.sum().backward()  # grad_out is an expanded (stride-0) tensor
        ref, gx, gk = reference_with_grads(x, kernel, k, torch.ones(out.shape, dtype=torch.float64))
        tol = tolerances(dtype)
        torch.testing.assert_close(out.cpu().double(), ref, **tol)
        torch.testing.assert_close(x.grad.cpu().double(), gx, **tol)
        torch.testing.assert_close(kernel.grad.cpu().double(), gk, **tol)

    def test_channels_last_input(self, device):
        x, kernel, k = make_inputs((2, 4, 4, 10, 12, 3), torch.float32, device)
        out = eac(x.to(memory_format=torch.channels_last), kernel.to(memory_format=torch.channels_last), k)
        torch.testing.assert_close(out, eac(x, kernel, k))

    def test_only_requested_gradients(self, device):
        x, kernel, k = make_inputs((1, 4, 4, 6, 6, 3), torch.float64, device)
        kernel.requires_grad_()
        eac(x, kernel, k).sum().backward()
        assert x.grad is None and kernel.grad is not None

    def test_gradcheck(self, device):
        x, kernel, k = make_inputs((2, 4, 2, 5, 7, 3), torch.float64, device)
        assert torch.autograd.gradcheck(eac, (x.requires_grad_(), kernel.requires_grad_(), k))

    def test_gradgradcheck(self, device):
        x, kernel, k = make_inputs((1, 2, 2, 4, 5, 3), torch.float64, device)
        assert torch.autograd.gradgradcheck(eac, (x.requires_grad_(), kernel.requires_grad_(), k))

    def test_opcheck(self, device):
        x, kernel, k = make_inputs((2, 4, 2, 7, 9, 3), torch.float32, device)
        g = torch.randn_like(x)
        groups = kernel.shape[1] // (k * k)
        torch.library.opcheck(torch.ops.deblurdiff.eac.default,
                              (x.requires_grad_(), kernel.requires_grad_(), k))
        torch.library.opcheck(torch.ops.deblurdiff.eac_grad_input.default, (g, kernel.detach(), k))
        torch.library.opcheck(torch.ops.deblurdiff.eac_grad_kernel.default, (g, x.detach(), k, groups))

    def test_torch_compile(self, device):
        # fullgraph: dynamo must trace the validation and treat the op as one node (register_fake);
        # AOT autograd must derive the backward from register_autograd.
        x, kernel, k = make_inputs((2, 4, 4, 12, 20, 5), torch.float32, device)
        compiled = torch.compile(eac, fullgraph=True)
        grad_out = torch.randn_like(x)
        xc, kc = x.clone().requires_grad_(), kernel.clone().requires_grad_()
        xe, ke = x.clone().requires_grad_(), kernel.clone().requires_grad_()
        out_c, out_e = compiled(xc, kc, k), eac(xe, ke, k)
        torch.testing.assert_close(out_c, out_e)
        out_c.backward(grad_out)
        out_e.backward(grad_out)
        torch.testing.assert_close(xc.grad, xe.grad)
        torch.testing.assert_close(kc.grad, ke.grad)

    def test_cpu_result_does_not_depend_on_thread_count(self):
        # Each output is summed by one thread in a fixed order: bitwise equal for 1 or 2 threads.
        x, kernel, k = make_inputs((4, 4, 4, 40, 50, 5), torch.float32)
        grad_out = torch.randn_like(x)
        before = torch.get_num_threads()
        results = []
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append((eac(x, kernel, k),
                                torch.ops.deblurdiff.eac_grad_input(grad_out, kernel, k),
                                torch.ops.deblurdiff.eac_grad_kernel(grad_out, x, k, 4)))
        finally:
            torch.set_num_threads(before)
        for one, two in zip(*results):
            assert torch.equal(one, two)

    def test_fake_tensor_shapes(self):
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            x = torch.empty(3, 4, 17, 9)
            kernel = torch.empty(3, 2 * 49, 17, 9)
            assert eac(x, kernel, 7).shape == (3, 4, 17, 9)
            gk = torch.ops.deblurdiff.eac_grad_kernel(x, x, 7, 2)
            assert gk.shape == (3, 98, 17, 9)

    def test_empty_batch(self):
        out = eac(torch.empty(0, 4, 5, 5), torch.empty(0, 100, 5, 5), 5)
        assert out.shape == (0, 4, 5, 5)


# ------------------------------------------------------------------------------------ bad input
def _bad(**overrides):
    spec = dict(x=(2, 4, 8, 8), kernel=(2, 100, 8, 8), k=5, kdtype=torch.float32, kdevice="cpu",
                xdtype=torch.float32)
    spec.update(overrides)
    return spec


BAD_INPUTS = [
    pytest.param(_bad(k=4), ValueError, "positive odd int, got 4", id="even-k"),
    pytest.param(_bad(k=0), ValueError, "positive odd int, got 0", id="zero-k"),
    pytest.param(_bad(k=-3), ValueError, "positive odd int, got -3", id="negative-k"),
    pytest.param(_bad(k=5.0), TypeError, "kernel_size to be an int, got float", id="float-k"),
    pytest.param(_bad(k=True), TypeError, "kernel_size to be an int, got bool", id="bool-k"),
    pytest.param(_bad(kernel=(2, 99, 8, 8)), ValueError, r"G·k² = G·25 with G dividing C=4 .*got 99",
                 id="kernel-channels-not-multiple"),
    pytest.param(_bad(kernel=(2, 75, 8, 8)), ValueError, r"G dividing C=4 .*got 75", id="groups-not-dividing"),
    pytest.param(_bad(kernel=(2, 0, 8, 8)), ValueError, r"got 0", id="no-kernel-channels"),
    pytest.param(_bad(kernel=(2, 100, 8, 9)), ValueError, r"spatial size \(8, 8\) .*got \(8, 9\)", id="spatial"),
    pytest.param(_bad(kernel=(3, 100, 8, 8)), ValueError, "kernel batch 2 .*got 3", id="batch"),
    pytest.param(_bad(x=(4, 8, 8), kernel=(2, 100, 8, 8)), ValueError, r"\(B, C, H, W\), got 3-D", id="input-3d"),
    pytest.param(_bad(kernel=(2, 100, 8)), ValueError, r"\(B, G·k², H, W\), got 3-D", id="kernel-3d"),
    pytest.param(_bad(kdtype=torch.float64), ValueError, "one dtype, got torch.float32 and torch.float64",
                 id="dtype-mismatch"),
    pytest.param(_bad(xdtype=torch.int32, kdtype=torch.int32), ValueError, "floating dtype", id="int-dtype"),
    pytest.param(_bad(kdevice="meta"), ValueError, "one device, got cpu and meta", id="device-mismatch"),
]


@pytest.mark.parametrize(("spec", "error", "message"), BAD_INPUTS)
def test_bad_input_raises_clear_error(spec, error, message):
    x = torch.zeros(spec["x"], dtype=spec["xdtype"])
    kernel = torch.zeros(spec["kernel"], dtype=spec["kdtype"], device=spec["kdevice"])
    with pytest.raises(error, match=message):
        eac(x, kernel, spec["k"])


def test_non_tensor_raises():
    with pytest.raises(TypeError, match="expected input and kernel to be tensors, got list"):
        eac([[1.0]], torch.zeros(1, 9, 1, 1), 3)


# ------------------------------------------------------------------------- backends and fallback
@pytest.fixture
def fresh_backends(monkeypatch):
    """An empty backend cache for this test; the process's real one comes back afterwards."""
    monkeypatch.setattr(_build, "_backends", {})


@pytest.mark.skipif(not has_compiler(), reason="no C++ compiler on this machine")
def test_cpu_backend_is_compiled():
    assert eac_backend("cpu") == "cpu"
    assert eac_backend(torch.device("cpu")) == "cpu"


def test_cuda_backend_without_cuda_raises():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        eac_backend("cuda")


def test_failed_build_falls_back_loudly(fresh_backends, monkeypatch, caplog):
    def broken_build():
        raise RuntimeError("Error building extension: compiler exploded")

    monkeypatch.setattr(_build, "_build_cpu", broken_build)
    x, kernel, k = make_inputs((2, 4, 2, 9, 12, 5), torch.float64)
    x.requires_grad_()
    kernel.requires_grad_()
    with caplog.at_level(logging.WARNING, logger="deblurdiff.ops"), \
            pytest.warns(RuntimeWarning, match="compiler exploded"):
        out = eac(x, kernel, k)
    assert eac_backend("cpu") == "cpu-torch"
    assert "pure-PyTorch path ('cpu-torch')" in caplog.text and "compiler exploded" in caplog.text
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref, gx, gk = reference_with_grads(x, kernel, k, grad_out)
    torch.testing.assert_close(out.detach(), ref)
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(kernel.grad, gk)


def test_backend_env_chooses_torch_path(fresh_backends, monkeypatch):
    monkeypatch.setenv(_build.BACKEND_ENV, "torch")
    assert eac_backend("cpu") == "cpu-torch"
    monkeypatch.setattr(_build, "_backends", {})
    monkeypatch.setenv(_build.BACKEND_ENV, "fastest")
    with pytest.raises(ValueError, match="expected 'auto' or 'torch', got 'fastest'"):
        eac_backend("cpu")


def test_stale_build_lock_is_cleared_fresh_one_kept(tmp_path, monkeypatch):
    # A build killed mid-way leaves torch's lock file behind, and every later process would wait on
    # it forever; a lock older than STALE_LOCK_S is removed, a recent one (a live build) is not.
    import os
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    for name, age, survives in (("killed", _build.STALE_LOCK_S + 60, False), ("live", 5, True)):
        lock = tmp_path / name / "lock"
        lock.parent.mkdir()
        lock.touch()
        os.utime(lock, (time.time() - age, time.time() - age))
        assert _build._build_directory(name) == str(tmp_path / name)
        assert lock.exists() == survives


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[5]], ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_torch_fallback_matches_reference(shape, dtype):
    x, kernel, k = make_inputs(shape, dtype)
    groups = kernel.shape[1] // (k * k)
    grad_out = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    ref, gx, gk = reference_with_grads(x, kernel, k, grad_out)
    tol = tolerances(dtype)
    torch.testing.assert_close(_torch_impl.forward(x, kernel, k).double(), ref, **tol)
    torch.testing.assert_close(_torch_impl.grad_input(grad_out, kernel, k).double(), gx, **tol)
    torch.testing.assert_close(_torch_impl.grad_kernel(grad_out, x, k, groups).double(), gk, **tol)


# ---------------------------------------------------------------------------------- CUDA vs CPU
@pytest.mark.gpu
class TestEACCuda:
    def test_backend_is_compiled(self):
        assert eac_backend("cuda") == "cuda"

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
    @pytest.mark.parametrize("shape", SHAPES + [(8, 4, 4, 64, 64, 5), (1, 4, 4, 130, 67, 5)], ids=_ids)
    def test_cuda_matches_cpu(self, shape, dtype):
        x, kernel, k = make_inputs(shape, dtype)
        grad_out = torch.randn(x.shape, dtype=torch.float64).to(dtype)
        results = {}
        for dev in ("cpu", "cuda"):
            # detach: x.to("cpu") is x itself, and a leaf that requires grad would make the
            # CUDA copy a non-leaf without .grad
            xd = x.detach().to(dev).requires_grad_()
            kd = kernel.detach().to(dev).requires_grad_()
            out = eac(xd, kd, k)
            out.backward(grad_out.to(dev))
            results[dev] = [t.detach().cpu().double() for t in (out, xd.grad, kd.grad)]
        tol = tolerances(dtype)
        for cpu_t, cuda_t in zip(results["cpu"], results["cuda"]):
            torch.testing.assert_close(cuda_t, cpu_t, **tol)

    def test_runs_on_current_stream(self):
        x, kernel, k = make_inputs((4, 4, 4, 96, 96, 5), torch.float32, "cuda")
        expected = eac(x, kernel, k)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = eac(x, kernel, k)
        side.synchronize()
        torch.testing.assert_close(out, expected)
