// CUDA IAN Vector Alignment Block: y = LN(GELU_erf(x w1^T + b1) w2^T + b2).
//
// The GEMMs go to cuBLAS/cuBLASLt through ATen with fp32 output (operands in the input dtype,
// fp32 accumulation). The epilogues are ours: bias + exact GELU after GEMM1 (z1 kept for the
// backward), bias + LayerNorm after GEMM2 (one block per row, fp32 block reductions, two-pass
// variance), and in the backward the LayerNorm backward (one block per row), the GELU' product
// with the GELU recomputed from z1, and fp32 column sums for the bias / LayerNorm parameter grads.
// Numerics follow the torch backend (mage_fast/ops/ian_projection.py).

#include <array>
#include <tuple>

#include "common.cuh"
#include "mage_fast/checks.h"
#include "mage_fast/ian_projection.h"
#include "mage_fast/math.h"

namespace mage_fast {
namespace cuda {
namespace {

using math::gelu;
using math::gelu_grad;

// z (N, D) fp32 GEMM output -> z1 = z + b1 and h = GELU(z1), both in T.
template <typename T>
__global__ void bias_gelu_kernel(const float* __restrict__ z, const T* __restrict__ b1, T* __restrict__ z1,
                                 T* __restrict__ h, int64_t N, int64_t D) {
  grid_stride(N * D, [&](int64_t i) {
    const float v = z[i] + static_cast<float>(b1[i % D]);
    if (z1 != nullptr) z1[i] = static_cast<T>(v);  // the GELU input, kept for backward only
    h[i] = static_cast<T>(gelu<float>(v));
  });
}

// One block per row of z2 (N, D) fp32: v = z2 + b2 (written back), mean, variance (two passes
// over v), xhat, y = xhat * ln_w + ln_b. xhat/rstd stored only when `save`.
template <typename T>
__global__ void bias_layernorm_kernel(float* __restrict__ z2, const T* __restrict__ b2, const T* __restrict__ ln_w,
                                      const T* __restrict__ ln_b, T* __restrict__ y, T* __restrict__ xhat,
                                      float* __restrict__ rstd, int64_t N, int64_t D, float eps, bool save) {
  __shared__ float shm[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    float* row = z2 + r * D;
    float s = 0.f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      const float v = row[c] + static_cast<float>(b2[c]);
      row[c] = v;
      s += v;
    }
    const float mean = block_sum(s, shm) / static_cast<float>(D);
    float q = 0.f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      const float d = row[c] - mean;
      q += d * d;
    }
    const float rs = rsqrtf(block_sum(q, shm) / static_cast<float>(D) + eps);
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      const float xh = (row[c] - mean) * rs;
      y[r * D + c] = static_cast<T>(xh * static_cast<float>(ln_w[c]) + static_cast<float>(ln_b[c]));
      if (save) xhat[r * D + c] = static_cast<T>(xh);
    }
    if (save && threadIdx.x == 0) rstd[r] = rs;
  }
}

// One block per row: dz2 = rstd * (dxh - mean(dxh) - xhat * mean(dxh * xhat)), dxh = dy * ln_w;
// written in fp32 (for db2) and in T (the GEMM operand).
template <typename T>
__global__ void layernorm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ xhat,
                                     const T* __restrict__ ln_w, const float* __restrict__ rstd,
                                     float* __restrict__ dz2, T* __restrict__ dz2_op, int64_t N, int64_t D) {
  __shared__ float shm[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    float s1 = 0.f, s2 = 0.f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      const float dxh = static_cast<float>(dy[r * D + c]) * static_cast<float>(ln_w[c]);
      s1 += dxh;
      s2 += dxh * static_cast<float>(xhat[r * D + c]);
    }
    const float m1 = block_sum(s1, shm) / static_cast<float>(D);
    const float m2 = block_sum(s2, shm) / static_cast<float>(D);
    const float rs = rstd[r];
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      const float dxh = static_cast<float>(dy[r * D + c]) * static_cast<float>(ln_w[c]);
      const float v = rs * (dxh - m1 - static_cast<float>(xhat[r * D + c]) * m2);
      dz2[r * D + c] = v;
      dz2_op[r * D + c] = static_cast<T>(v);
    }
  }
}

template <typename T>
__global__ void gelu_kernel(const T* __restrict__ z1, T* __restrict__ h, int64_t total) {
  grid_stride(total, [&](int64_t i) { h[i] = static_cast<T>(gelu<float>(static_cast<float>(z1[i]))); });
}

// dz1 (fp32, in place) *= GELU'(z1); also written in T as the GEMM operand.
template <typename T>
__global__ void gelu_bwd_kernel(float* __restrict__ dz1, const T* __restrict__ z1, T* __restrict__ dz1_op,
                                int64_t total) {
  grid_stride(total, [&](int64_t i) {
    const float v = dz1[i] * gelu_grad<float>(static_cast<float>(z1[i]));
    dz1[i] = v;
    dz1_op[i] = static_cast<T>(v);
  });
}

unsigned int row_grid(int64_t N) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(N, 65535)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ian_projection_fwd_cuda(
    const at::Tensor& x_, const at::Tensor& w1, const at::Tensor& b1_, const at::Tensor& w2,
    const at::Tensor& b2_, const at::Tensor& ln_w_, const at::Tensor& ln_b_, double eps, bool save) {
  checks::ian_projection_fwd(x_, w1, w2, {{"b1", &b1_}, {"b2", &b2_}, {"ln_w", &ln_w_}, {"ln_b", &ln_b_}}, eps,
                             c10::DeviceType::CUDA);
  const at::cuda::CUDAGuard guard(x_.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor x = x_.contiguous(), b1 = b1_.contiguous(), b2 = b2_.contiguous();
  const at::Tensor ln_w = ln_w_.contiguous(), ln_b = ln_b_.contiguous();
  const int64_t N = x.size(0), D = w1.size(0);
  at::Tensor y = at::empty({N, D}, x.options());
  at::Tensor z1 = at::empty({save ? N : 0, save ? D : 0}, x.options());
  at::Tensor xhat = at::empty({save ? N : 0, save ? D : 0}, x.options());
  at::Tensor rstd = at::empty({save ? N : 0}, x.options().dtype(at::kFloat));
  if (N > 0 && D > 0) {
    at::Tensor z = mm_f32(x, w1.t()).contiguous();  // (N, D) fp32
    at::Tensor h = at::empty({N, D}, x.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "ian_projection_fwd_cuda", [&] {
      bias_gelu_kernel<scalar_t><<<grid_for(N * D), kThreads, 0, stream>>>(
          z.data_ptr<float>(), b1.data_ptr<scalar_t>(), save ? z1.data_ptr<scalar_t>() : nullptr,
          h.data_ptr<scalar_t>(), N, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor z2 = mm_f32(h, w2.t()).contiguous();
      bias_layernorm_kernel<scalar_t><<<row_grid(N), kThreads, 0, stream>>>(
          z2.data_ptr<float>(), b2.data_ptr<scalar_t>(), ln_w.data_ptr<scalar_t>(), ln_b.data_ptr<scalar_t>(),
          y.data_ptr<scalar_t>(), save ? xhat.data_ptr<scalar_t>() : nullptr,
          save ? rstd.data_ptr<float>() : nullptr, N, D, static_cast<float>(eps), save);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return save ? std::tuple{y, z1, xhat, rstd} : ian_projection_unsaved(y, x);
}

Grads7 ian_projection_bwd_cuda(const at::Tensor& dy_, const at::Tensor& x_, const at::Tensor& w1,
                               const at::Tensor& w2, const at::Tensor& ln_w_, const at::Tensor& z1_,
                               const at::Tensor& xhat_, const at::Tensor& rstd_, std::array<bool, 7> needs) {
  const IanBwdInputs in =
      ian_projection_bwd_inputs(dy_, x_, w1, w2, ln_w_, z1_, xhat_, rstd_, needs, c10::DeviceType::CUDA);
  const int64_t N = x_.size(0), D = w1.size(0);
  const auto dt = x_.scalar_type();
  const at::cuda::CUDAGuard guard(x_.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto [nx, nw1, nb1, nw2, nb2, nlw, nlb] = needs;
  const auto e = [](const at::Tensor& src) { return at::empty({0}, src.options()); };
  at::Tensor dx = e(x_), dw1 = e(w1), db1 = e(w1), dw2 = e(w2), db2 = e(w2), dln_w = e(ln_w_), dln_b = e(ln_w_);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ian_projection_bwd_cuda", [&] {
    using T = scalar_t;
    const T* dyp = in.dy.data_ptr<T>();
    const T* xhp = in.xhat.data_ptr<T>();
    if (nlw) dln_w = colsum<T, T>(dyp, xhp, N, D, x_.options()).to(ln_w_.scalar_type());
    if (nlb) dln_b = colsum<T, T>(dyp, nullptr, N, D, x_.options()).to(ln_w_.scalar_type());
    if (!in.need_dz2 || N == 0) return;
    at::Tensor dz2 = at::empty({N, D}, x_.options().dtype(at::kFloat));
    at::Tensor dz2_op = at::empty({N, D}, x_.options());
    layernorm_bwd_kernel<T><<<row_grid(N), kThreads, 0, stream>>>(dyp, xhp, in.ln_w.data_ptr<T>(),
                                                                  in.rstd.data_ptr<float>(), dz2.data_ptr<float>(),
                                                                  dz2_op.data_ptr<T>(), N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (nb2) db2 = colsum<float, float>(dz2.data_ptr<float>(), nullptr, N, D, x_.options()).to(w2.scalar_type());
    if (nw2) {
      at::Tensor h = at::empty({N, D}, x_.options());  // GELU(in.z1) recomputed, not stored
      gelu_kernel<T><<<grid_for(N * D), kThreads, 0, stream>>>(in.z1.data_ptr<T>(), h.data_ptr<T>(), N * D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dw2 = mm_f32(dz2_op.t(), h).to(w2.scalar_type());
    }
    if (!in.need_dz1) return;
    at::Tensor dz1 = mm_f32(dz2_op, w2).contiguous();  // (N, D) fp32
    at::Tensor dz1_op = at::empty({N, D}, x_.options());
    gelu_bwd_kernel<T><<<grid_for(N * D), kThreads, 0, stream>>>(dz1.data_ptr<float>(), in.z1.data_ptr<T>(),
                                                                   dz1_op.data_ptr<T>(), N * D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (nb1) db1 = colsum<float, float>(dz1.data_ptr<float>(), nullptr, N, D, x_.options()).to(w1.scalar_type());
    if (nw1) dw1 = mm_f32(dz1_op.t(), x_.contiguous()).to(w1.scalar_type());
    if (nx) dx = mm_f32(dz1_op, w1).to(dt);
  });
  // N == 0: the GEMM-based grads are zeros of their shapes.
  if (N == 0) {
    if (nb2) db2 = at::zeros({D}, w2.options());
    if (nw2) dw2 = at::zeros_like(w2);
    if (nb1) db1 = at::zeros({D}, w1.options());
    if (nw1) dw1 = at::zeros_like(w1);
    if (nx) dx = at::empty_like(x_);
  }
  return {dx, dw1, db1, dw2, db2, dln_w, dln_b};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(mage_fast, CUDA, m) {
  m.impl("ian_projection_fwd", &cuda::ian_projection_fwd_cuda);
  m.impl("ian_projection_bwd", &cuda::ian_projection_bwd_cuda);
}

}  // namespace mage_fast
