// Torch glue for the EAC CUDA kernels (eac_cuda_kernels.cu): argument checks, device guard, the
// current stream, output allocation, and the private ops torch.ops.deblurdiff_cuda.{eac_forward,
// eac_grad_input, eac_grad_kernel}. The public op deblurdiff::eac (schema, autograd, fake) lives in
// deblurdiff/ops/eac_op.py.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

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

void check_args(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  TORCH_CHECK(a.dim() == 4 && b.dim() == 4, "eac: expected 4-D tensors, got ", a.dim(), "-D and ",
              b.dim(), "-D");
  TORCH_CHECK(k > 0 && k % 2 == 1, "eac: expected a positive odd kernel_size, got ", k);
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && a.device() == b.device(),
              "eac (cuda): expected both tensors on one CUDA device, got ", a.device(), " and ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "eac: expected tensors of one dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
              "eac: expected equal batch and spatial sizes, got ", a.sizes(), " and ", b.sizes());
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(a.size(1) <= kIntMax && b.size(1) <= kIntMax && a.size(2) <= kIntMax / 2 &&
                  a.size(3) <= kIntMax / 2 && k <= 1023,
              "eac (cuda): sizes out of range: ", a.sizes(), ", ", b.sizes(), ", kernel_size ", k);
}

int64_t groups_of(const at::Tensor& kernel, int64_t C, int64_t k) {
  const int64_t kc = kernel.size(1);
  TORCH_CHECK(kc > 0 && kc % (k * k) == 0 && C % (kc / (k * k)) == 0,
              "eac: kernel channels must be G·k² with G dividing C=", C, ", got ", kc);
  return kc / (k * k);
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
  const int64_t C = input_.size(1);
  TORCH_CHECK(grad_out_.size(1) == C, "eac: grad_out and input channel counts differ");
  TORCH_CHECK(groups > 0 && C % groups == 0, "eac: groups must divide C=", C, ", got ", groups);
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

TORCH_LIBRARY(deblurdiff_cuda, m) {
  m.def("eac_forward(Tensor input, Tensor kernel, int kernel_size) -> Tensor");
  m.def("eac_grad_input(Tensor grad_out, Tensor kernel, int kernel_size) -> Tensor");
  m.def("eac_grad_kernel(Tensor grad_out, Tensor input, int kernel_size, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(deblurdiff_cuda, CUDA, m) {
  m.impl("eac_forward", &eac_forward);
  m.impl("eac_grad_input", &eac_grad_input);
  m.impl("eac_grad_kernel", &eac_grad_kernel);
}
