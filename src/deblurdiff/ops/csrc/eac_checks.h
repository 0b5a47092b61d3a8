// The compiled kernels' argument checks, shared by the CPU (eac_cpu.cpp) and CUDA (eac_cuda.cpp)
// implementations of the deblurdiff::eac ops. The user-facing validation, with messages that name
// the public arguments, is deblurdiff.ops.eac_op.check_eac_inputs (run by eac() and by the fake
// kernel); these are the guard of the raw op (torch.ops.deblurdiff.*), which callers may reach
// directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace deblurdiff_eac {

// a: input or grad_out (B, C, H, W); b: kernel (B, G·k², H, W) or input; k: kernel_size.
inline void check_pair(const at::Tensor& a, const at::Tensor& b, int64_t k) {
  TORCH_CHECK(a.dim() == 4 && b.dim() == 4, "eac: expected 4-D tensors, got ", a.dim(), "-D and ",
              b.dim(), "-D");
  TORCH_CHECK(k > 0 && k % 2 == 1, "eac: expected a positive odd kernel_size, got ", k);
  TORCH_CHECK(a.device() == b.device(), "eac: expected both tensors on one device, got ", a.device(),
              " and ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "eac: expected tensors of one dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(3) == b.size(3),
              "eac: expected equal batch and spatial sizes, got ", a.sizes(), " and ", b.sizes());
}

// G from a kernel of G·k² channels applied to C channels (G divides C).
inline int64_t groups_of(const at::Tensor& kernel, int64_t C, int64_t k) {
  const int64_t kc = kernel.size(1);
  TORCH_CHECK(kc > 0 && kc % (k * k) == 0 && C % (kc / (k * k)) == 0,
              "eac: kernel channels must be G·k² with G dividing C=", C, ", got ", kc);
  return kc / (k * k);
}

// eac_grad_kernel(grad_out, input, k, groups): grad_out is like input; groups divides C.
inline void check_grad_kernel(const at::Tensor& grad_out, const at::Tensor& input, int64_t groups) {
  const int64_t C = input.size(1);
  TORCH_CHECK(grad_out.size(1) == C, "eac: grad_out and input channel counts differ");
  TORCH_CHECK(groups > 0 && C % groups == 0, "eac: groups must divide C=", C, ", got ", groups);
}

}  // namespace deblurdiff_eac
