// Torch glue for the EAC CUDA kernels (eac_cuda_kernels.cu): argument checks (eac_checks.h, shared
// with the CPU kernels), device guard, the current stream, output allocation, and the registration
// as the CUDA kernels of deblurdiff::{eac, eac_grad_input, eac_grad_kernel}, whose one schema (with
// autograd, fake and autocast) is defined in deblurdiff/ops/eac_op.py.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "eac_checks.h"
#include "eac_cuda.h"

namespace {

using deblurdiff_eac::Dtype;

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    case at::kDouble: return Dtype::kFloat64;
    default: TORCH_CHECK(false, "eac (cuda): expected float32/float16/bfloat16/float64, got ", t.scalar_type());
  }
}

using deblurdiff_eac::check_grad_kernel;
using deblurdiff_eac::groups_of;

// The shared checks, plus the 32-bit index range the CUDA kernels use.
void check_args(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  deblurdiff_eac::check_pair(a, b, k);
  TORCH_CHECK(a.is_cuda(), "eac (cuda): expected CUDA tensors, got ", a.device());
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(a.size(1) <= kIntMax && b.size(1) <= kIntMax && a.size(2) <= kIntMax / 2 &&
                  a.size(3) <= kIntMax / 2 && k <= 1023,
              "eac (cuda): sizes out of range: ", a.sizes(), ", ", b.sizes(), ", kernel_size ", k);
}

int as_int(int64_t v) { return static_cast<int>(v); }

at::Tensor eac_forward(const at::Tensor& input_, const at::Tensor& kernel_, int64_t k) {
  check_args(input_, kernel_, k);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor kernel = kernel_.contiguous();
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t G = groups_of(kernel, C, k);
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(deblurdiff_eac::launch_forward(
      dtype_of(input), input.const_data_ptr(), kernel.const_data_ptr(), out.mutable_data_ptr(), B,
      as_int(C), as_int(G), as_int(H), as_int(W), as_int(k), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor eac_grad_input(const at::Tensor& grad_out_, const at::Tensor& kernel_, int64_t k) {
  check_args(grad_out_, kernel_, k);
  const c10::cuda::CUDAGuard guard(grad_out_.device());
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor kernel = kernel_.contiguous();
  const int64_t B = grad_out.size(0), C = grad_out.size(1), H = grad_out.size(2), W = grad_out.size(3);
  const int64_t G = groups_of(kernel, C, k);
  at::Tensor grad_in = at::empty(grad_out.sizes(), grad_out.options());
  if (grad_in.numel() == 0) return grad_in;
  C10_CUDA_CHECK(deblurdiff_eac::launch_grad_input(
      dtype_of(grad_out), grad_out.const_data_ptr(), kernel.const_data_ptr(), grad_in.mutable_data_ptr(), B,
      as_int(C), as_int(G), as_int(H), as_int(W), as_int(k), c10::cuda::getCurrentCUDAStream()));
  return grad_in;
}

at::Tensor eac_grad_kernel(const at::Tensor& grad_out_, const at::Tensor& input_, int64_t k, int64_t groups) {
  check_args(grad_out_, input_, k);
  check_grad_kernel(grad_out_, input_, groups);
  const int64_t C = input_.size(1);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor input = input_.contiguous();
  const int64_t B = input.size(0), H = input.size(2), W = input.size(3);
  at::Tensor grad_k = at::empty({B, groups * k * k, H, W}, input.options());
  if (grad_k.numel() == 0) return grad_k;
  C10_CUDA_CHECK(deblurdiff_eac::launch_grad_kernel(
      dtype_of(input), grad_out.const_data_ptr(), input.const_data_ptr(), grad_k.mutable_data_ptr(), B,
      as_int(C), as_int(groups), as_int(H), as_int(W), as_int(k), c10::cuda::getCurrentCUDAStream()));
  return grad_k;
}

}  // namespace

// The schemas are defined once, in Python (deblurdiff/ops/eac_op.py); this only adds CUDA kernels.
TORCH_LIBRARY_IMPL(deblurdiff, CUDA, m) {
  m.impl("eac", &eac_forward);
  m.impl("eac_grad_input", &eac_grad_input);
  m.impl("eac_grad_kernel", &eac_grad_kernel);
}
