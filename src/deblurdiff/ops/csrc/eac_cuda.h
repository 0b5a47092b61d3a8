// Interface between the CUDA kernels (eac_cuda_kernels.cu, no ATen: a light nvcc compile) and the
// torch glue (eac_cuda.cpp: checks, device guard, stream, op registration).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace deblurdiff_eac {

enum class Dtype { kFloat32, kFloat16, kBFloat16, kFloat64 };

// All tensors contiguous, on the current device. input/grad_out/out: (B, C, H, W);
// kernel/grad_kernel: (B, G·k², H, W). Each returns cudaGetLastError() after its launch.
cudaError_t launch_forward(Dtype dtype, const void* input, const void* kernel, void* out, int64_t B,
                           int C, int G, int H, int W, int k, cudaStream_t stream);
cudaError_t launch_grad_input(Dtype dtype, const void* grad_out, const void* kernel, void* grad_in,
                              int64_t B, int C, int G, int H, int W, int k, cudaStream_t stream);
cudaError_t launch_grad_kernel(Dtype dtype, const void* grad_out, const void* input, void* grad_kernel,
                               int64_t B, int C, int G, int H, int W, int k, cudaStream_t stream);

}  // namespace deblurdiff_eac
