// CUDA kernels of patch pooling in token layout (no permute copies); the CUDA twin of
// csrc/cpu/patch_pool.cpp. x (B, H*W, C), token t = h*W + w; output cell (i, j) of the
// (Ho, Wo) = (ceil(H/k), ceil(W/k)) grid averages tokens h in [i*k, min(H, i*k+k)),
// w in [j*k, min(W, j*k+k)) (mage_fast/math.h: pool_span).
//
// One thread per VEC consecutive channels of one output (forward) or input (backward) token:
// 16-byte vector loads and stores when C and the pointers allow it, consecutive threads along C
// (coalesced), fp32 accumulation (fp64 for double). Index math is 32-bit (I = int32_t) whenever
// every index fits, which is every realistic shape: 64-bit division costs ~10x a 32-bit one.

#include <cstdint>

#include "common.cuh"
#include "mage_fast/checks.h"
#include "mage_fast/math.h"

namespace mage_fast {
namespace cuda {
namespace {

template <typename I>
struct PoolParams {
  I B, H, W, k, Cv, Ho, Wo;  // Cv = C / VEC: vectors per token
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, typename I, int VEC>
__global__ void patch_pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, PoolParams<I> p) {
  using A = at::opmath_type<T>;
  using V = Vec<T, VEC>;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  const I total = p.B * p.Ho * p.Wo * p.Cv;
  for (I idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    const I c = idx % p.Cv, o = idx / p.Cv;
    const I j = o % p.Wo, bi = o / p.Wo;
    const I i = bi % p.Ho, b = bi / p.Ho;
    const math::Span<I> hs = math::pool_span(i, p.k, p.H), ws = math::pool_span(j, p.k, p.W);
    A acc[VEC] = {};
    for (I h = hs.start; h < hs.end; ++h) {
      const V* row = xv + (b * p.H + h) * p.W * p.Cv + c;
      for (I w = ws.start; w < ws.end; ++w) {
        const V in = row[w * p.Cv];
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[e] += static_cast<A>(in.v[e]);
      }
    }
    const A inv = A(1) / static_cast<A>(hs.size() * ws.size());
    V out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) out.v[e] = static_cast<T>(acc[e] * inv);
    yv[idx] = out;
  }
}

template <typename T, typename I, int VEC>
__global__ void patch_pool_bwd_kernel(const T* __restrict__ gy, T* __restrict__ gx, PoolParams<I> p) {
  using A = at::opmath_type<T>;
  using V = Vec<T, VEC>;
  const V* gyv = reinterpret_cast<const V*>(gy);
  V* gxv = reinterpret_cast<V*>(gx);
  const I total = p.B * p.H * p.W * p.Cv;
  for (I idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    const I c = idx % p.Cv, t = idx / p.Cv;
    const I w = t % p.W, bh = t / p.W;
    const I h = bh % p.H, b = bh / p.H;
    const I i = h / p.k, j = w / p.k;
    const math::Span<I> hs = math::pool_span(i, p.k, p.H), ws = math::pool_span(j, p.k, p.W);
    const A inv = A(1) / static_cast<A>(hs.size() * ws.size());
    const V g = gyv[((b * p.Ho + i) * p.Wo + j) * p.Cv + c];
    V out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) out.v[e] = static_cast<T>(static_cast<A>(g.v[e]) * inv);
    gxv[idx] = out;
  }
}

// 16 bytes per thread when C is a multiple of the vector width and both pointers are aligned.
template <typename T>
int vec_width(int64_t C, const void* a, const void* b) {
  const int vec = static_cast<int>(16 / sizeof(T));
  const bool aligned = reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  return (vec > 1 && C % vec == 0 && aligned) ? vec : 1;
}

// Launch `K<T, I, VEC>` over the `out_elems` outputs with the index type and vector width the
// shape allows (`biggest`: the larger tensor's element count).
template <typename T, template <typename, typename, int> class K>
void launch(const T* src, T* dst, int64_t B, int64_t H, int64_t W, int64_t k, int64_t C, int64_t out_elems,
            int64_t biggest) {
  const int64_t Ho = math::ceil_div(H, k), Wo = math::ceil_div(W, k);
  const int vec = vec_width<T>(C, src, dst);
  const int64_t total = out_elems / vec;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto go = [&](auto index, auto width) {
    using I = decltype(index);
    constexpr int VEC = decltype(width)::value;
    PoolParams<I> p{static_cast<I>(B), static_cast<I>(H), static_cast<I>(W), static_cast<I>(k),
                    static_cast<I>(C / VEC), static_cast<I>(Ho), static_cast<I>(Wo)};
    K<T, I, VEC>::run(src, dst, p, grid_for(total), stream);
  };
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  // Every element index plus one grid stride must fit in int32.
  const bool small = biggest + static_cast<int64_t>(grid_for(total)) * kThreads < (int64_t(1) << 31);
  if (vec > 1) {
    small ? go(int32_t{}, std::integral_constant<int, kVec>{}) : go(int64_t{}, std::integral_constant<int, kVec>{});
  } else {
    small ? go(int32_t{}, std::integral_constant<int, 1>{}) : go(int64_t{}, std::integral_constant<int, 1>{});
  }
}

template <typename T, typename I, int VEC>
struct Fwd {
  static void run(const T* x, T* y, PoolParams<I> p, unsigned int grid, cudaStream_t s) {
    patch_pool_fwd_kernel<T, I, VEC><<<grid, kThreads, 0, s>>>(x, y, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

template <typename T, typename I, int VEC>
struct Bwd {
  static void run(const T* gy, T* gx, PoolParams<I> p, unsigned int grid, cudaStream_t s) {
    patch_pool_bwd_kernel<T, I, VEC><<<grid, kThreads, 0, s>>>(gy, gx, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor patch_pool_fwd_cuda(const at::Tensor& x_, int64_t H, int64_t W, int64_t k) {
  checks::patch_pool(x_, "patch_pool_fwd", "x", H, W, k, H * W, "H*W", c10::DeviceType::CUDA);
  const at::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const int64_t B = x.size(0), C = x.size(2);
  at::Tensor y = at::empty({B, math::ceil_div(H, k) * math::ceil_div(W, k), C}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "patch_pool_fwd_cuda", [&] {
    launch<scalar_t, Fwd>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, H, W, k, C, y.numel(),
                          std::max(x.numel(), y.numel()));
  });
  return y;
}

at::Tensor patch_pool_bwd_cuda(const at::Tensor& gy_, int64_t H, int64_t W, int64_t k) {
  const int64_t tokens = k >= 1 ? math::ceil_div(H, k) * math::ceil_div(W, k) : -1;
  checks::patch_pool(gy_, "patch_pool_bwd", "grad_y", H, W, k, tokens, "ceil(H/k)*ceil(W/k)", c10::DeviceType::CUDA);
  const at::cuda::CUDAGuard guard(gy_.device());
  const at::Tensor gy = gy_.contiguous();
  const int64_t B = gy.size(0), C = gy.size(2);
  at::Tensor gx = at::empty({B, H * W, C}, gy.options());
  if (gx.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "patch_pool_bwd_cuda", [&] {
    launch<scalar_t, Bwd>(gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, H, W, k, C, gx.numel(), gx.numel());
  });
  return gx;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(mage_fast, CUDA, m) {
  m.impl("patch_pool_fwd", &cuda::patch_pool_fwd_cuda);
  m.impl("patch_pool_bwd", &cuda::patch_pool_bwd_cuda);
}

}  // namespace mage_fast
