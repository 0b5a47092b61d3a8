// Element-wise Adaptive Convolution (EAC) on the CPU: forward, input gradient, kernel gradient.
//
//   out[b,c,y,x] = Σ_{i,j} K[b, g·k²+i·k+j, y, x] · in[b, c, y+i−p, x+j−p]      (zero padding)
//   g = c / (C/G),  p = (k−1)/2                       (DESIGN.md §1 "EAC exactly")
//
// Work is split into "row tasks" (b, g, y): every task writes its own output rows, so tasks run in
// parallel on torch's intra-op OpenMP threads with one writer per output and no k²×input
// temporary. Chunks of tasks are handed out dynamically (not one static slice per thread as
// at::parallel_for does), so a thread the OS pre-empts on a busy machine does not stall the rest.
// Inside a row the x loop is contiguous for every operand; the interior of a row (where no tap
// reads outside the image) is computed in register blocks of V outputs that the compiler turns into
// SIMD FMAs; the p border pixels at each end take a checked scalar path.
//
// Half types (float16, bfloat16) are converted row by row into float scratch and accumulate in
// float (at::opmath_type); float32 and float64 read the tensors in place.
//
// Registered as the CPU kernels of the ops deblurdiff::{eac, eac_grad_input, eac_grad_kernel}, whose
// one schema (with autograd, fake and autocast) is defined in deblurdiff/ops/eac_op.py: once this
// library is loaded, a call on CPU tensors reaches these functions straight from the dispatcher.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "eac_checks.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

namespace {

// Outputs per register block: 64 bytes of accumulators (one AVX-512 or two AVX2 registers).
template <typename acc_t>
constexpr int64_t kBlock = 64 / sizeof(acc_t);

// Row pointer in acc_t: the row itself when scalar_t == acc_t, else a float copy in `scratch`.
template <typename scalar_t, typename acc_t>
const acc_t* as_acc(const scalar_t* src, int64_t n, acc_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    for (int64_t x = 0; x < n; ++x) scratch[x] = static_cast<acc_t>(src[x]);
    return scratch;
  }
}

// Destination for an output row: the row itself when scalar_t == acc_t, else `scratch` (then
// store_row converts it).
template <typename scalar_t, typename acc_t>
acc_t* acc_dst(scalar_t* dst, acc_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return dst;
  } else {
    return scratch;
  }
}

template <typename scalar_t, typename acc_t>
void store_row(const acc_t* acc, scalar_t* dst, int64_t n) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    for (int64_t x = 0; x < n; ++x) dst[x] = static_cast<scalar_t>(acc[x]);
  }
}

// Forward for one output row.  krow[t]: kernel tap t at row y (W values); irow[i]: input row
// y+i−p or nullptr when outside the image.  acc[x] = Σ_ij krow[i·k+j][x] · irow[i][x+j−p].
template <typename acc_t>
void forward_row(const acc_t* const* krow, const acc_t* const* irow, int64_t k, int64_t W,
                 acc_t* __restrict__ acc) {
  constexpr int64_t V = kBlock<acc_t>;
  const int64_t p = (k - 1) / 2;
  auto checked = [&](int64_t x) {
    acc_t s = 0;
    for (int64_t i = 0; i < k; ++i) {
      if (!irow[i]) continue;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t xx = x + j - p;
        if (xx >= 0 && xx < W) s += krow[i * k + j][x] * irow[i][xx];
      }
    }
    return s;
  };
  int64_t x = 0;
  for (; x < std::min(p, W); ++x) acc[x] = checked(x);
  for (; x + V <= W - p; x += V) {  // interior: every tap in range
    acc_t a[V] = {};
    for (int64_t i = 0; i < k; ++i) {
      if (!irow[i]) continue;
      const acc_t* __restrict__ in = irow[i] + x - p;
      for (int64_t j = 0; j < k; ++j) {
        const acc_t* __restrict__ kr = krow[i * k + j] + x;
        for (int64_t v = 0; v < V; ++v) a[v] += kr[v] * in[v + j];
      }
    }
    for (int64_t v = 0; v < V; ++v) acc[x + v] = a[v];
  }
  for (; x < W; ++x) acc[x] = checked(x);
}

// Input gradient for one row y'.  krow[i·k+j]: kernel tap (i,j) at source row ys = y'−i+p;
// drow[i]: grad_out row ys (nullptr when outside).  acc[x'] = Σ_ij krow[ij][x'−j+p] · drow[i][x'−j+p].
template <typename acc_t>
void grad_input_row(const acc_t* const* krow, const acc_t* const* drow, int64_t k, int64_t W,
                    acc_t* __restrict__ acc) {
  constexpr int64_t V = kBlock<acc_t>;
  const int64_t p = (k - 1) / 2;
  auto checked = [&](int64_t x) {
    acc_t s = 0;
    for (int64_t i = 0; i < k; ++i) {
      if (!drow[i]) continue;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t xs = x - j + p;
        if (xs >= 0 && xs < W) s += krow[i * k + j][xs] * drow[i][xs];
      }
    }
    return s;
  };
  int64_t x = 0;
  for (; x < std::min(p, W); ++x) acc[x] = checked(x);
  for (; x + V <= W - p; x += V) {
    acc_t a[V] = {};
    for (int64_t i = 0; i < k; ++i) {
      if (!drow[i]) continue;
      for (int64_t j = 0; j < k; ++j) {
        const acc_t* __restrict__ kr = krow[i * k + j] + x + p - j;
        const acc_t* __restrict__ d = drow[i] + x + p - j;
        for (int64_t v = 0; v < V; ++v) a[v] += kr[v] * d[v];
      }
    }
    for (int64_t v = 0; v < V; ++v) acc[x + v] = a[v];
  }
  for (; x < W; ++x) acc[x] = checked(x);
}

// Kernel gradient for one tap (i, j) of one row y: acc[x] = Σ_{c in group} drow[c][x] · irow[c][x+j−p]
// where irow[c] is input row y+i−p of channel c (the caller zeroes the tap when that row is outside).
template <typename acc_t>
void grad_kernel_tap(const acc_t* const* drow, const acc_t* const* irow, int64_t cpg, int64_t j,
                     int64_t p, int64_t W, acc_t* __restrict__ acc) {
  constexpr int64_t V = kBlock<acc_t>;
  const int64_t off = j - p;
  // x range where x+off stays inside [0, W).
  const int64_t lo = std::min(W, std::max<int64_t>(0, -off));
  const int64_t hi = std::max(lo, std::min(W, W - off));
  for (int64_t x = 0; x < lo; ++x) acc[x] = 0;
  for (int64_t x = hi; x < W; ++x) acc[x] = 0;
  int64_t x = lo;
  for (; x + V <= hi; x += V) {
    acc_t a[V] = {};
    for (int64_t c = 0; c < cpg; ++c) {
      const acc_t* __restrict__ d = drow[c] + x;
      const acc_t* __restrict__ in = irow[c] + x + off;
      for (int64_t v = 0; v < V; ++v) a[v] += d[v] * in[v];
    }
    for (int64_t v = 0; v < V; ++v) acc[x + v] = a[v];
  }
  for (; x < hi; ++x) {
    acc_t s = 0;
    for (int64_t c = 0; c < cpg; ++c) s += drow[c][x] * irow[c][x + off];
    acc[x] = s;
  }
}

// f(begin, end) over [0, n) in chunks of `grain` tasks, chunks claimed dynamically by torch's
// OpenMP threads (torch.set_num_threads applies). Serial when one chunk, one thread, or nested.
template <typename F>
void parallel_tasks(int64_t n, int64_t grain, const F& f) {
  const int64_t chunks = (n + grain - 1) / grain;
  at::internal::lazy_init_num_threads();
  if (chunks <= 1 || at::get_num_threads() <= 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
#pragma omp parallel
  {
    for (int64_t chunk = next++; chunk < chunks; chunk = next++) {
      f(chunk * grain, std::min(n, (chunk + 1) * grain));
    }
  }
}

struct Geometry {
  int64_t B, C, G, H, W, k, cpg, kk, HW;
};

Geometry geometry(const at::Tensor& chw_tensor, int64_t C, int64_t G, int64_t k) {
  Geometry s;
  s.B = chw_tensor.size(0);
  s.C = C;
  s.G = G;
  s.H = chw_tensor.size(2);
  s.W = chw_tensor.size(3);
  s.k = k;
  s.cpg = C / G;
  s.kk = k * k;
  s.HW = s.H * s.W;
  return s;
}

// Row tasks per chunk: ~32k multiply-adds (ATen's usual grain), so small images do not pay thread
// start-up for nothing and large ones still give every thread many chunks to balance.
constexpr int64_t kGrainFlops = 32768;
int64_t grain(const Geometry& s) {
  return std::max<int64_t>(1, kGrainFlops / std::max<int64_t>(1, s.kk * s.W * s.cpg));
}

using deblurdiff_eac::check_grad_kernel;
using deblurdiff_eac::check_pair;
using deblurdiff_eac::groups_of;

at::Tensor eac_forward(const at::Tensor& input_, const at::Tensor& kernel_, int64_t k) {
  check_pair(input_, kernel_, k);
  const int64_t C = input_.size(1);
  const int64_t G = groups_of(kernel_, C, k);
  const at::Tensor input = input_.contiguous();
  const at::Tensor kernel = kernel_.contiguous();
  const Geometry s = geometry(input, C, G, k);
  at::Tensor out = at::empty(input.sizes(), input.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "eac_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in_p = input.const_data_ptr<scalar_t>();
    const scalar_t* k_p = kernel.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    parallel_tasks(s.B * s.G * s.H, grain(s), [&](int64_t begin, int64_t end) {
      const bool half = !std::is_same_v<scalar_t, acc_t>;
      std::vector<acc_t> kscratch(half ? s.kk * s.W : 0), iscratch(half ? s.k * s.W : 0), acc(s.W);
      std::vector<const acc_t*> krow(s.kk), irow(s.k);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t y = task % s.H, bg = task / s.H, g = bg % s.G, b = bg / s.G;
        const scalar_t* kbase = k_p + (b * s.G + g) * s.kk * s.HW + y * s.W;
        for (int64_t t = 0; t < s.kk; ++t)
          krow[t] = as_acc(kbase + t * s.HW, s.W, kscratch.data() + (half ? t * s.W : 0));
        for (int64_t cc = 0; cc < s.cpg; ++cc) {
          const int64_t c = g * s.cpg + cc;
          const scalar_t* ibase = in_p + (b * s.C + c) * s.HW;
          for (int64_t i = 0; i < s.k; ++i) {
            const int64_t yy = y + i - (s.k - 1) / 2;
            irow[i] = (yy < 0 || yy >= s.H)
                          ? nullptr
                          : as_acc(ibase + yy * s.W, s.W, iscratch.data() + (half ? i * s.W : 0));
          }
          scalar_t* dst = out_p + (b * s.C + c) * s.HW + y * s.W;
          acc_t* a = acc_dst(dst, acc.data());
          forward_row(krow.data(), irow.data(), s.k, s.W, a);
          store_row(a, dst, s.W);
        }
      }
    });
  });
  return out;
}

at::Tensor eac_grad_input(const at::Tensor& grad_out_, const at::Tensor& kernel_, int64_t k) {
  check_pair(grad_out_, kernel_, k);
  const int64_t C = grad_out_.size(1);
  const int64_t G = groups_of(kernel_, C, k);
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor kernel = kernel_.contiguous();
  const Geometry s = geometry(grad_out, C, G, k);
  at::Tensor grad_in = at::empty(grad_out.sizes(), grad_out.options());
  if (grad_in.numel() == 0) return grad_in;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "eac_grad_input_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* d_p = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* k_p = kernel.const_data_ptr<scalar_t>();
    scalar_t* gi_p = grad_in.mutable_data_ptr<scalar_t>();
    const int64_t p = (s.k - 1) / 2;
    parallel_tasks(s.B * s.G * s.H, grain(s), [&](int64_t begin, int64_t end) {
      const bool half = !std::is_same_v<scalar_t, acc_t>;
      std::vector<acc_t> kscratch(half ? s.kk * s.W : 0), dscratch(half ? s.k * s.W : 0), acc(s.W);
      std::vector<const acc_t*> krow(s.kk), drow(s.k);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t y = task % s.H, bg = task / s.H, g = bg % s.G, b = bg / s.G;
        const scalar_t* kbase = k_p + (b * s.G + g) * s.kk * s.HW;
        // Tap (i, j) of output row y reads source row ys = y − i + p (shared by the whole group).
        for (int64_t i = 0; i < s.k; ++i) {
          const int64_t ys = y - i + p;
          for (int64_t j = 0; j < s.k; ++j) {
            const int64_t t = i * s.k + j;
            krow[t] = (ys < 0 || ys >= s.H)
                          ? nullptr
                          : as_acc(kbase + t * s.HW + ys * s.W, s.W, kscratch.data() + (half ? t * s.W : 0));
          }
        }
        for (int64_t cc = 0; cc < s.cpg; ++cc) {
          const int64_t c = g * s.cpg + cc;
          const scalar_t* dbase = d_p + (b * s.C + c) * s.HW;
          for (int64_t i = 0; i < s.k; ++i) {
            const int64_t ys = y - i + p;
            drow[i] = (ys < 0 || ys >= s.H)
                          ? nullptr
                          : as_acc(dbase + ys * s.W, s.W, dscratch.data() + (half ? i * s.W : 0));
          }
          scalar_t* dst = gi_p + (b * s.C + c) * s.HW + y * s.W;
          acc_t* a = acc_dst(dst, acc.data());
          grad_input_row(krow.data(), drow.data(), s.k, s.W, a);
          store_row(a, dst, s.W);
        }
      }
    });
  });
  return grad_in;
}

at::Tensor eac_grad_kernel(const at::Tensor& grad_out_, const at::Tensor& input_, int64_t k, int64_t groups) {
  check_pair(grad_out_, input_, k);
  check_grad_kernel(grad_out_, input_, groups);
  const int64_t C = input_.size(1);
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor input = input_.contiguous();
  const Geometry s = geometry(input, C, groups, k);
  at::Tensor grad_k = at::empty({s.B, s.G * s.kk, s.H, s.W}, input.options());
  if (grad_k.numel() == 0) return grad_k;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "eac_grad_kernel_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* d_p = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* in_p = input.const_data_ptr<scalar_t>();
    scalar_t* gk_p = grad_k.mutable_data_ptr<scalar_t>();
    const int64_t p = (s.k - 1) / 2;
    parallel_tasks(s.B * s.G * s.H, grain(s), [&](int64_t begin, int64_t end) {
      const bool half = !std::is_same_v<scalar_t, acc_t>;
      // Converted rows per channel of the group: grad_out row y, input rows y−p .. y+p.
      std::vector<acc_t> dscratch(half ? s.cpg * s.W : 0), iscratch(half ? s.cpg * s.k * s.W : 0), acc(s.W);
      std::vector<const acc_t*> drow(s.cpg), irow(s.cpg * s.k), irow_i(s.cpg);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t y = task % s.H, bg = task / s.H, g = bg % s.G, b = bg / s.G;
        for (int64_t cc = 0; cc < s.cpg; ++cc) {
          const int64_t c = g * s.cpg + cc;
          drow[cc] = as_acc(d_p + (b * s.C + c) * s.HW + y * s.W, s.W, dscratch.data() + (half ? cc * s.W : 0));
          for (int64_t i = 0; i < s.k; ++i) {
            const int64_t yy = y + i - p;
            irow[cc * s.k + i] =
                (yy < 0 || yy >= s.H)
                    ? nullptr
                    : as_acc(in_p + (b * s.C + c) * s.HW + yy * s.W, s.W,
                             iscratch.data() + (half ? (cc * s.k + i) * s.W : 0));
          }
        }
        scalar_t* kdst = gk_p + (b * s.G + g) * s.kk * s.HW + y * s.W;
        for (int64_t i = 0; i < s.k; ++i) {
          const int64_t yy = y + i - p;
          for (int64_t cc = 0; cc < s.cpg; ++cc) irow_i[cc] = irow[cc * s.k + i];
          for (int64_t j = 0; j < s.k; ++j) {
            scalar_t* dst = kdst + (i * s.k + j) * s.HW;
            acc_t* a = acc_dst(dst, acc.data());
            if (yy < 0 || yy >= s.H) {
              std::fill(a, a + s.W, acc_t(0));
            } else {
              grad_kernel_tap(drow.data(), irow_i.data(), s.cpg, j, p, s.W, a);
            }
            store_row(a, dst, s.W);
          }
        }
      }
    });
  });
  return grad_k;
}

}  // namespace

// The schemas are defined once, in Python (deblurdiff/ops/eac_op.py); this only adds CPU kernels.
TORCH_LIBRARY_IMPL(deblurdiff, CPU, m) {
  m.impl("eac", &eac_forward);
  m.impl("eac_grad_input", &eac_grad_input);
  m.impl("eac_grad_kernel", &eac_grad_kernel);
}
