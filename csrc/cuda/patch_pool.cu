// CUDA kernels of patch pooling in token layout (no permute copies); the CUDA twin of
// csrc/cpu/patch_pool.cpp. x (B, H*W, C), token t = h*W + w; output cell (i, j) of the
// (Ho, Wo) = (ceil(H/k), ceil(W/k)) grid averages tokens h in [i*k, min(H, i*k+k)),
// w in [j*k, min(W, j*k+k)). One thread per output element, consecutive threads along C
// (coalesced), fp32 accumulation (fp64 for double); grid-stride loops with 64-bit indices.

#include "common.cuh"

namespace mage_fast {
namespace cuda {
namespace {

struct PoolParams {
  int64_t B, H, W, k, C, Ho, Wo;
};

template <typename T>
__global__ void patch_pool_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, PoolParams p) {
  using A = at::opmath_type<T>;
  const int64_t total = p.B * p.Ho * p.Wo * p.C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % p.C;
    int64_t rest = idx / p.C;
    const int64_t j = rest % p.Wo;
    rest /= p.Wo;
    const int64_t i = rest % p.Ho;
    const int64_t b = rest / p.Ho;
    const int64_t h0 = i * p.k, h1 = min(p.H, h0 + p.k), w0 = j * p.k, w1 = min(p.W, w0 + p.k);
    A acc = 0;
    for (int64_t h = h0; h < h1; ++h) {
      const T* row = x + ((b * p.H + h) * p.W) * p.C + c;
      for (int64_t w = w0; w < w1; ++w) acc += static_cast<A>(row[w * p.C]);
    }
    y[idx] = static_cast<T>(acc / static_cast<A>((h1 - h0) * (w1 - w0)));
  }
}

template <typename T>
__global__ void patch_pool_bwd_kernel(const T* __restrict__ gy, T* __restrict__ gx, PoolParams p) {
  using A = at::opmath_type<T>;
  const int64_t total = p.B * p.H * p.W * p.C;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % p.C;
    int64_t rest = idx / p.C;
    const int64_t w = rest % p.W;
    rest /= p.W;
    const int64_t h = rest % p.H;
    const int64_t b = rest / p.H;
    const int64_t i = h / p.k, j = w / p.k;
    const int64_t cnt = (min(p.H, i * p.k + p.k) - i * p.k) * (min(p.W, j * p.k + p.k) - j * p.k);
    const A g = static_cast<A>(gy[((b * p.Ho + i) * p.Wo + j) * p.C + c]);
    gx[idx] = static_cast<T>(g / static_cast<A>(cnt));
  }
}

void check_args(const at::Tensor& t, const char* op, const char* arg, int64_t H, int64_t W, int64_t k,
                int64_t tokens, const char* tokens_desc) {
  MAGE_CHECK_CUDA(op, arg, t);
  TORCH_CHECK(t.dim() == 3, op, ": ", arg, " must be 3-D (B, tokens, C), got ", t.dim(), "-D ", t.sizes());
  TORCH_CHECK(H >= 1 && W >= 1, op, ": grid (H, W) must be positive, got (", H, ", ", W, ")");
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK(t.size(1) == tokens, op, ": ", arg, ".size(1) must be ", tokens_desc, " = ", tokens, " for grid (",
              H, ", ", W, ") and k=", k, ", got ", t.size(1));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", arg, " must be floating point, got ",
              t.scalar_type());
}

at::Tensor patch_pool_fwd_cuda(const at::Tensor& x_, int64_t H, int64_t W, int64_t k) {
  check_args(x_, "patch_pool_fwd", "x", H, W, k, H * W, "H*W");
  const at::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous();
  PoolParams p{x.size(0), H, W, k, x.size(2), (H + k - 1) / k, (W + k - 1) / k};
  at::Tensor y = at::empty({p.B, p.Ho * p.Wo, p.C}, x.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "patch_pool_fwd_cuda", [&] {
    patch_pool_fwd_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

at::Tensor patch_pool_bwd_cuda(const at::Tensor& gy_, int64_t H, int64_t W, int64_t k) {
  const int64_t Ho = k >= 1 ? (H + k - 1) / k : 0, Wo = k >= 1 ? (W + k - 1) / k : 0;
  check_args(gy_, "patch_pool_bwd", "grad_y", H, W, k, Ho * Wo, "ceil(H/k)*ceil(W/k)");
  const at::cuda::CUDAGuard guard(gy_.device());
  const at::Tensor gy = gy_.contiguous();
  PoolParams p{gy.size(0), H, W, k, gy.size(2), Ho, Wo};
  at::Tensor gx = at::empty({p.B, H * W, p.C}, gy.options());
  const int64_t total = gx.numel();
  if (total == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gy.scalar_type(), "patch_pool_bwd_cuda", [&] {
    patch_pool_bwd_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        gy.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
