// CPU kernels of patch pooling in token layout (no permute copies).
//
// x (B, H*W, C), token t = h*W + w. Output cell (i, j) of the (Ho, Wo) = (ceil(H/k), ceil(W/k))
// grid averages tokens h in [i*k, min(H, i*k+k)), w in [j*k, min(W, j*k+k)).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <vector>

namespace mage_fast {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks shared by forward and backward; `name`/`tokens` describe the token axis expected.
void check_args(const at::Tensor& t, const char* op, const char* arg, int64_t H, int64_t W, int64_t k,
                int64_t tokens, const char* tokens_desc) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", arg, " must be a CPU tensor (got ", t.device(), ")");
  TORCH_CHECK(t.dim() == 3, op, ": ", arg, " must be 3-D (B, tokens, C), got ", t.dim(), "-D ",
              t.sizes());
  TORCH_CHECK(H >= 1 && W >= 1, op, ": grid (H, W) must be positive, got (", H, ", ", W, ")");
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK(t.size(1) == tokens, op, ": ", arg, ".size(1) must be ", tokens_desc, " = ", tokens,
              " for grid (", H, ", ", W, ") and k=", k, ", got ", t.size(1));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", arg,
              " must be floating point, got ", t.scalar_type());
}

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
      const int64_t h0 = i * k, h1 = std::min(H, h0 + k);
      const int64_t w0 = j * k, w1 = std::min(W, w0 + k);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t w = w0; w < w1; ++w) {
          const scalar_t* src = x + ((b * H + h) * W + w) * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<acc_t>(src[c]);
        }
      }
      const acc_t inv = acc_t(1) / static_cast<acc_t>((h1 - h0) * (w1 - w0));
      scalar_t* dst = y + o * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(acc[c] * inv);
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
      const int64_t nh = std::min(H, i * k + k) - i * k, nw = std::min(W, j * k + k) - j * k;
      const acc_t inv = acc_t(1) / static_cast<acc_t>(nh * nw);
      const scalar_t* src = gy + ((b * Ho + i) * Wo + j) * C;
      scalar_t* dst = gx + t * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(static_cast<acc_t>(src[c]) * inv);
    }
  });
}

at::Tensor patch_pool_fwd_cpu(const at::Tensor& x_in, int64_t H, int64_t W, int64_t k) {
  check_args(x_in, "mage_fast::patch_pool_fwd", "x", H, W, k, H * W, "H*W");
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
  check_args(gy_in, "mage_fast::patch_pool_bwd", "grad_y", H, W, k,
             k >= 1 ? ceil_div(H, k) * ceil_div(W, k) : -1, "ceil(H/k)*ceil(W/k)");
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
