// Element-wise Adaptive Convolution (EAC) on CUDA: forward, input gradient, kernel gradient.
//
//   out[b,c,y,x] = Σ_{i,j} K[b, g·k²+i·k+j, y, x] · in[b, c, y+i−p, x+j−p]      (zero padding)
//   g = c / (C/G),  p = (k−1)/2                       (DESIGN.md §1 "EAC exactly")
//
// One thread per output element; a block is a 32×8 pixel tile of one (b, c) plane (grid z), so the
// 32 threads of a warp hold 32 consecutive x: every kernel-tap read, every shifted input read and
// every write is one coalesced row segment. The traffic that must move is dominated by the
// per-pixel kernel K (k² values per pixel, each read once); the k² input reads of a tile hit L1.
// float16/bfloat16/float32 (and float64) with at::opmath_type accumulation (float for the halves).
// k = 5 is compile-time (fully unrolled, all K loads in flight); other odd k take a generic
// instantiation. Kernels run on the current stream of the tensors' device.
//
// Registered as private ops torch.ops.deblurdiff_cuda.{eac_forward, eac_grad_input, eac_grad_kernel};
// the public op deblurdiff::eac (schema, autograd, fake) lives in deblurdiff/ops/eac.py.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace {

constexpr int kTileX = 32;  // one warp along x: coalesced
constexpr int kTileY = 8;
constexpr int kThreads = kTileX * kTileY;
constexpr int64_t kMaxGridZ = 65535;

// out[plane, y, x] for plane = b·C + c.
template <typename scalar_t, int KS>
__global__ void __launch_bounds__(kThreads)
eac_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ kernel,
                   scalar_t* __restrict__ out, int C, int G, int H, int W, int k_rt, int64_t planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int k = KS > 0 ? KS : k_rt;
  const int p = (k - 1) / 2;
  const int x = blockIdx.x * kTileX + threadIdx.x;
  const int y = blockIdx.y * kTileY + threadIdx.y;
  if (x >= W || y >= H) return;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int cpg = C / G;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t b = plane / C;
    const int g = static_cast<int>(plane % C) / cpg;
    const scalar_t* in = input + plane * HW;
    const scalar_t* kp = kernel + (b * G + g) * k * k * HW + static_cast<int64_t>(y) * W + x;
    acc_t acc = 0;
#pragma unroll
    for (int i = 0; i < k; ++i) {
      const int yy = y + i - p;
      const bool row_ok = yy >= 0 && yy < H;
#pragma unroll
      for (int j = 0; j < k; ++j) {
        const int xx = x + j - p;
        // K is read unconditionally (it streams, one value per tap and pixel); the input read is
        // predicated so zero padding never touches memory outside the plane.
        const acc_t w = static_cast<acc_t>(kp[(i * k + j) * HW]);
        const acc_t v = (row_ok && xx >= 0 && xx < W)
                            ? static_cast<acc_t>(in[static_cast<int64_t>(yy) * W + xx]) : acc_t(0);
        acc += w * v;
      }
    }
    out[plane * HW + static_cast<int64_t>(y) * W + x] = static_cast<scalar_t>(acc);
  }
}

// d in[plane, y', x'] = Σ_ij K[b, g·k²+i·k+j, y'−i+p, x'−j+p] · d out[plane, y'−i+p, x'−j+p].
template <typename scalar_t, int KS>
__global__ void __launch_bounds__(kThreads)
eac_grad_input_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ kernel,
                      scalar_t* __restrict__ grad_in, int C, int G, int H, int W, int k_rt,
                      int64_t planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int k = KS > 0 ? KS : k_rt;
  const int p = (k - 1) / 2;
  const int x = blockIdx.x * kTileX + threadIdx.x;
  const int y = blockIdx.y * kTileY + threadIdx.y;
  if (x >= W || y >= H) return;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int cpg = C / G;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t b = plane / C;
    const int g = static_cast<int>(plane % C) / cpg;
    const scalar_t* d = grad_out + plane * HW;
    const scalar_t* kbase = kernel + (b * G + g) * k * k * HW;
    acc_t acc = 0;
#pragma unroll
    for (int i = 0; i < k; ++i) {
      const int ys = y - i + p;
      if (ys < 0 || ys >= H) continue;
#pragma unroll
      for (int j = 0; j < k; ++j) {
        const int xs = x - j + p;
        if (xs < 0 || xs >= W) continue;
        const int64_t src = static_cast<int64_t>(ys) * W + xs;  // source pixel of tap (i, j)
        acc += static_cast<acc_t>(kbase[(i * k + j) * HW + src]) * static_cast<acc_t>(d[src]);
      }
    }
    grad_in[plane * HW + static_cast<int64_t>(y) * W + x] = static_cast<scalar_t>(acc);
  }
}

// d K[b, g·k²+i·k+j, y, x] = Σ_{c in g} d out[b, c, y, x] · in[b, c, y+i−p, x+j−p]; plane = b·G + g.
template <typename scalar_t, int KS>
__global__ void __launch_bounds__(kThreads)
eac_grad_kernel_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ input,
                       scalar_t* __restrict__ grad_k, int C, int G, int H, int W, int k_rt,
                       int64_t planes) {
  using acc_t = at::opmath_type<scalar_t>;
  const int k = KS > 0 ? KS : k_rt;
  const int p = (k - 1) / 2;
  const int x = blockIdx.x * kTileX + threadIdx.x;
  const int y = blockIdx.y * kTileY + threadIdx.y;
  if (x >= W || y >= H) return;
  const int64_t HW = static_cast<int64_t>(H) * W;
  const int cpg = C / G;
  const int64_t pix = static_cast<int64_t>(y) * W + x;
  for (int64_t plane = blockIdx.z; plane < planes; plane += gridDim.z) {
    const int64_t b = plane / G;
    const int g = static_cast<int>(plane % G);
    const int64_t first = (b * C + static_cast<int64_t>(g) * cpg) * HW;  // channel g·cpg of batch b
    scalar_t* dk = grad_k + plane * k * k * HW + pix;
#pragma unroll
    for (int i = 0; i < k; ++i) {
      const int yy = y + i - p;
      const bool row_ok = yy >= 0 && yy < H;
#pragma unroll
      for (int j = 0; j < k; ++j) {
        const int xx = x + j - p;
        acc_t acc = 0;
        if (row_ok && xx >= 0 && xx < W) {
          const int64_t src = static_cast<int64_t>(yy) * W + xx;
          for (int cc = 0; cc < cpg; ++cc) {
            const int64_t ch = first + cc * HW;
            acc += static_cast<acc_t>(grad_out[ch + pix]) * static_cast<acc_t>(input[ch + src]);
          }
        }
        dk[(i * k + j) * HW] = static_cast<scalar_t>(acc);
      }
    }
  }
}

dim3 grid_for(int H, int W, int64_t planes) {
  return dim3((W + kTileX - 1) / kTileX, (H + kTileY - 1) / kTileY,
              static_cast<unsigned>(std::min(planes, kMaxGridZ)));
}

// Calls launch(std::integral_constant<int, KS>): KS = 5 (DeblurDiff's k, fully unrolled) or 0
// (runtime k). float64 (tests, gradcheck) always takes the runtime-k instantiation. Few
// instantiations keep the JIT build and the CI's nvcc check short.
template <typename scalar_t, typename F>
void with_static_k(int64_t k, F&& launch) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (k == 5) {
      launch(std::integral_constant<int, 5>{});
      return;
    }
  }
  launch(std::integral_constant<int, 0>{});
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
  TORCH_CHECK(a.size(2) < (1LL << 30) && a.size(3) < (1LL << 30), "eac: image too large");
}

int64_t groups_of(const at::Tensor& kernel, int64_t C, int64_t k) {
  const int64_t kc = kernel.size(1);
  TORCH_CHECK(kc > 0 && kc % (k * k) == 0 && C % (kc / (k * k)) == 0,
              "eac: kernel channels must be G·k² with G dividing C=", C, ", got ", kc);
  return kc / (k * k);
}

at::Tensor eac_forward(const at::Tensor& input_, const at::Tensor& kernel_, int64_t k) {
  check_args(input_, kernel_, k);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor kernel = kernel_.contiguous();
  const int64_t B = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t G = groups_of(kernel, C, k);
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = B * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "eac_forward_cuda", [&] {
    with_static_k<scalar_t>(k, [&](auto ks) {
      eac_forward_kernel<scalar_t, decltype(ks)::value><<<grid_for(H, W, planes), dim3(kTileX, kTileY), 0, stream>>>(
          input.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          static_cast<int>(C), static_cast<int>(G), static_cast<int>(H), static_cast<int>(W),
          static_cast<int>(k), planes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = B * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "eac_grad_input_cuda", [&] {
    with_static_k<scalar_t>(k, [&](auto ks) {
      eac_grad_input_kernel<scalar_t, decltype(ks)::value><<<grid_for(H, W, planes), dim3(kTileX, kTileY), 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(),
          static_cast<int>(C), static_cast<int>(G), static_cast<int>(H), static_cast<int>(W),
          static_cast<int>(k), planes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
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
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t planes = B * groups;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "eac_grad_kernel_cuda", [&] {
    with_static_k<scalar_t>(k, [&](auto ks) {
      eac_grad_kernel_kernel<scalar_t, decltype(ks)::value><<<grid_for(H, W, planes), dim3(kTileX, kTileY), 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), grad_k.mutable_data_ptr<scalar_t>(),
          static_cast<int>(C), static_cast<int>(groups), static_cast<int>(H), static_cast<int>(W),
          static_cast<int>(k), planes);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
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
