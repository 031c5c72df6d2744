// CUDA kernels of patch pooling in token layout (no permute copies); the CUDA twin of
// csrc/cpu/patch_pool.cpp. x (B, H*W, C), token t = h*W + w; output cell (i, j) of the
// (Ho, Wo) = (ceil(H/k), ceil(W/k)) grid averages tokens h in [i*k, min(H, i*k+k)),
// w in [j*k, min(W, j*k+k)) (mage_fast/math.h: pool_span).
//
// One kernel for both directions, one thread per VEC consecutive channels of one output (forward)
// or input (backward) token: 16-byte vector loads and stores when C and the pointers allow it,
// consecutive threads along C (coalesced), fp32 accumulation (fp64 for double). Index math is 32-bit (I = int32_t) whenever
// every index fits, which is every realistic shape (common.cuh: grid_stride).

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

// The launcher checked the alignment (vec_width): a VEC-wide view of the same memory.
template <int VEC, typename T>
const Vec<T, VEC>* as_vec(const T* p) {
  return reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <int VEC, typename T>
Vec<T, VEC>* as_vec(T* p) {
  return reinterpret_cast<Vec<T, VEC>*>(p);
}

// (b, row, col, c) of a flat index over a (B, rows, cols, Cv) row-major grid.
template <typename I>
struct GridIndex {
  I b, row, col, c;
};

template <typename I>
__device__ GridIndex<I> unravel(I idx, I rows, I cols, I Cv) {
  const I c = idx % Cv, t = idx / Cv;
  const I col = t % cols, br = t / cols;
  return {br / rows, br % rows, col, c};
}

// One thread per VEC channels of a destination token. Forward (src x, dst y): the mean of the
// output cell's tokens. Backward (src grad_y, dst grad_x, the adjoint): the input token's cell
// gradient over the cell's size.
template <typename T, typename I, int VEC, bool BACKWARD>
__global__ void patch_pool_kernel(const Vec<T, VEC>* __restrict__ src, Vec<T, VEC>* __restrict__ dst,
                                  PoolParams<I> p) {
  using A = at::opmath_type<T>;
  const I rows = BACKWARD ? p.H : p.Ho, cols = BACKWARD ? p.W : p.Wo;
  grid_stride(p.B * rows * cols * p.Cv, [&](I idx) {
    const GridIndex<I> d = unravel(idx, rows, cols, p.Cv);
    const I i = BACKWARD ? d.row / p.k : d.row, j = BACKWARD ? d.col / p.k : d.col;  // the cell
    const math::Span<I> hs = math::pool_span(i, p.k, p.H), ws = math::pool_span(j, p.k, p.W);
    A acc[VEC] = {};
    if constexpr (BACKWARD) {
      const Vec<T, VEC> g = src[((d.b * p.Ho + i) * p.Wo + j) * p.Cv + d.c];
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] = static_cast<A>(g.v[e]);
    } else {
      for (I h = hs.start; h < hs.end; ++h) {
        const Vec<T, VEC>* row = src + (d.b * p.H + h) * p.W * p.Cv + d.c;
        for (I w = ws.start; w < ws.end; ++w) {
          const Vec<T, VEC> in = row[w * p.Cv];
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] += static_cast<A>(in.v[e]);
        }
      }
    }
    const A inv = A(1) / static_cast<A>(hs.size() * ws.size());
    Vec<T, VEC> out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) out.v[e] = static_cast<T>(acc[e] * inv);
    dst[idx] = out;
  });
}

// 16 bytes per thread when C is a multiple of the vector width and both pointers are aligned.
template <typename T>
int vec_width(int64_t C, const void* a, const void* b) {
  const int vec = static_cast<int>(16 / sizeof(T));
  const bool aligned = reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
  return (vec > 1 && C % vec == 0 && aligned) ? vec : 1;
}

// Launch the kernel over the `out_elems` outputs with the index type and vector width the shape
// allows (`biggest`: the larger tensor's element count).
template <typename T, bool BACKWARD>
void launch(const T* src, T* dst, int64_t B, int64_t H, int64_t W, int64_t k, int64_t C, int64_t out_elems,
            int64_t biggest) {
  const int64_t Ho = math::ceil_div(H, k), Wo = math::ceil_div(W, k);
  const int vec = vec_width<T>(C, src, dst);
  const unsigned int grid = grid_for(out_elems / vec);
  auto stream = at::cuda::getCurrentCUDAStream();
  auto go = [&](auto index, auto width) {
    using I = decltype(index);
    constexpr int VEC = decltype(width)::value;
    PoolParams<I> p{static_cast<I>(B), static_cast<I>(H), static_cast<I>(W), static_cast<I>(k),
                    static_cast<I>(C / VEC), static_cast<I>(Ho), static_cast<I>(Wo)};
    patch_pool_kernel<T, I, VEC, BACKWARD><<<grid, kThreads, 0, stream>>>(as_vec<VEC>(src), as_vec<VEC>(dst), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  // Every element index plus one grid stride must fit in int32.
  const bool small = biggest + static_cast<int64_t>(grid) * kThreads < (int64_t(1) << 31);
  if (vec > 1) {
    small ? go(int32_t{}, std::integral_constant<int, kVec>{}) : go(int64_t{}, std::integral_constant<int, kVec>{});
  } else {
    small ? go(int32_t{}, std::integral_constant<int, 1>{}) : go(int64_t{}, std::integral_constant<int, 1>{});
  }
}

at::Tensor patch_pool_fwd_cuda(const at::Tensor& x_, int64_t H, int64_t W, int64_t k) {
  checks::patch_pool(x_, "patch_pool_fwd", "x", H, W, k, H * W, "H*W", c10::DeviceType::CUDA);
  const at::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  const int64_t B = x.size(0), C = x.size(2);
  at::Tensor y = at::empty({B, math::ceil_div(H, k) * math::ceil_div(W, k), C}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "patch_pool_fwd_cuda", [&] {
    launch<scalar_t, false>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), B, H, W, k, C, y.numel(),
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
    launch<scalar_t, true>(gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), B, H, W, k, C, gx.numel(), gx.numel());
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
