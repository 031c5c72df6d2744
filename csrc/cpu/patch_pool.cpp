// CPU kernels of patch pooling in token layout (no permute copies).
//
// x (B, H*W, C), token t = h*W + w. Output cell (i, j) of the (Ho, Wo) = (ceil(H/k), ceil(W/k))
// grid averages tokens h in [i*k, min(H, i*k+k)), w in [j*k, min(W, j*k+k)).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "mage_fast/checks.h"
#include "mage_fast/math.h"

namespace mage_fast {
namespace cpu_rows {

// The extension is built for baseline x86-64 (SSE2); these row loops carry the whole cost, so GCC
// compiles them for AVX-512/AVX2 as well and picks the best at load time (like ATen's own
// CPU_CAPABILITY dispatch). Other compilers/targets get the plain loop.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MAGE_FAST_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MAGE_FAST_MULTIVERSION
#endif

template <typename T, typename A>
inline void add_row_impl(A* __restrict acc, const T* __restrict src, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += static_cast<A>(src[c]);
}

template <typename T, typename A>
inline void store_row_impl(T* __restrict dst, const A* __restrict acc, A scale, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(acc[c] * scale);
}

template <typename T, typename A>
inline void scale_row_impl(T* __restrict dst, const T* __restrict src, A scale, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(static_cast<A>(src[c]) * scale);
}

// acc += src; dst = acc * scale; dst = src * scale (all in the accumulation type A).
#define MAGE_FAST_ROW_OPS(T, A)                                                             \
  MAGE_FAST_MULTIVERSION void add_row(A* acc, const T* src, int64_t n) { add_row_impl(acc, src, n); } \
  MAGE_FAST_MULTIVERSION void store_row(T* dst, const A* acc, A scale, int64_t n) {         \
    store_row_impl(dst, acc, scale, n);                                                     \
  }                                                                                         \
  MAGE_FAST_MULTIVERSION void scale_row(T* dst, const T* src, A scale, int64_t n) {         \
    scale_row_impl(dst, src, scale, n);                                                     \
  }

MAGE_FAST_ROW_OPS(float, float)
MAGE_FAST_ROW_OPS(c10::BFloat16, float)
MAGE_FAST_ROW_OPS(c10::Half, float)
MAGE_FAST_ROW_OPS(double, double)

}  // namespace cpu_rows

namespace {

using cpu_rows::add_row;
using cpu_rows::scale_row;
using cpu_rows::store_row;

using math::ceil_div;
using math::pool_span;

template <typename scalar_t>
void pool_fwd_kernel(const scalar_t* x, scalar_t* y, int64_t B, int64_t H, int64_t W, int64_t k,
                     int64_t C) {
  const int64_t Ho = ceil_div(H, k), Wo = ceil_div(W, k);
  // One task per output token; grain keeps a task near 32k elements of work.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, C * k * k));
  using acc_t = at::opmath_type<scalar_t>;  // float for bf16/fp16/fp32, double for fp64
  at::parallel_for(0, B * Ho * Wo, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t o = begin; o < end; ++o) {
      const int64_t b = o / (Ho * Wo), i = (o / Wo) % Ho, j = o % Wo;
      const math::Span<int64_t> hs = pool_span(i, k, H), ws = pool_span(j, k, W);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t h = hs.start; h < hs.end; ++h) {
        for (int64_t w = ws.start; w < ws.end; ++w) {
          const scalar_t* src = x + ((b * H + h) * W + w) * C;
          add_row(acc.data(), src, C);
        }
      }
      const acc_t inv = acc_t(1) / static_cast<acc_t>(hs.size() * ws.size());
      store_row(y + o * C, acc.data(), inv, C);
    }
  });
}

template <typename scalar_t>
void pool_bwd_kernel(const scalar_t* gy, scalar_t* gx, int64_t B, int64_t H, int64_t W, int64_t k,
                     int64_t C) {
  const int64_t Ho = ceil_div(H, k), Wo = ceil_div(W, k);
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, C));
  // One task per input token: each reads its cell's gradient and divides by the cell size.
  at::parallel_for(0, B * H * W, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (H * W), h = (t / W) % H, w = t % W;
      const int64_t i = h / k, j = w / k;
      const math::Span<int64_t> hs = pool_span(i, k, H), ws = pool_span(j, k, W);
      const acc_t inv = acc_t(1) / static_cast<acc_t>(hs.size() * ws.size());
      scale_row(gx + t * C, gy + ((b * Ho + i) * Wo + j) * C, inv, C);
    }
  });
}

at::Tensor patch_pool_fwd_cpu(const at::Tensor& x_in, int64_t H, int64_t W, int64_t k) {
  checks::patch_pool(x_in, "mage_fast::patch_pool_fwd", "x", H, W, k, H * W, "H*W", c10::DeviceType::CPU);
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), C = x.size(2);
  at::Tensor y = at::empty({B, ceil_div(H, k) * ceil_div(W, k), C}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "patch_pool_fwd", [&] {
    pool_fwd_kernel<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, H, W, k, C);
  });
  return y;
}

at::Tensor patch_pool_bwd_cpu(const at::Tensor& gy_in, int64_t H, int64_t W, int64_t k) {
  checks::patch_pool(gy_in, "mage_fast::patch_pool_bwd", "grad_y", H, W, k,
                     k >= 1 ? ceil_div(H, k) * ceil_div(W, k) : -1, "ceil(H/k)*ceil(W/k)", c10::DeviceType::CPU);
  const at::Tensor gy = gy_in.contiguous();
  const int64_t B = gy.size(0), C = gy.size(2);
  at::Tensor gx = at::empty({B, H * W, C}, gy.options());
  if (gx.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "patch_pool_bwd", [&] {
    pool_bwd_kernel<scalar_t>(gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, H, W, k, C);
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(mage_fast, CPU, m) {
  m.impl("patch_pool_fwd", &patch_pool_fwd_cpu);
  m.impl("patch_pool_bwd", &patch_pool_bwd_cpu);
}

}  // namespace mage_fast
