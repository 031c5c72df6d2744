// CUDA ce_mse: chunked fused linear cross-entropy + masked MSE (DESIGN.md §3).
//
// Tokens are walked in chunks of `chunk_rows` rows; per chunk the logits (rows, V) come from one
// cuBLAS GEMM with fp32 output (never the N x V logits). Then one block per row:
//   pass 1: online log-sum-exp over the vocabulary (each thread keeps a running (max, sum), merged
//           across the block), the CE term of the row accumulated into an fp32 scalar;
//   pass 2 (only when a gradient is needed): d ce/d logits = (softmax - onehot) / denom in fp32,
//           the target class as -(sum of the other classes' p) (fp32 target-class gradient, no
//           cancellation for confident predictions), rounded once to hidden's dtype.
// grad_hidden = P W per chunk (cuBLAS, fp32 accumulation); grad_weight = sum over chunks of P^T h,
// accumulated in an fp32 buffer and rounded once. Ignored rows give 0 everywhere; denom is
// num_items if given, else the labelled tokens counted on the device (no host sync), at least 1.
// The MSE over masked image rows is two small kernels (fp32 sum, then the gradient).

#include <optional>
#include <tuple>

#include "common.cuh"

namespace mage_fast {
namespace cuda {
namespace {

template <typename T>
__global__ void ce_rows_kernel(const float* __restrict__ logits, const int64_t* __restrict__ labels,
                               T* __restrict__ p_out, float* __restrict__ ce_sum, const float* __restrict__ inv_denom,
                               int64_t rows, int64_t V, int64_t ignore_index, bool need_grad) {
  __shared__ float shm_m[32];
  __shared__ float shm_s[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t y = labels[r];
    const float* row = logits + r * V;
    T* prow = need_grad ? p_out + r * V : nullptr;
    if (y == ignore_index) {
      if (need_grad) {
        for (int64_t v = threadIdx.x; v < V; v += blockDim.x) prow[v] = static_cast<T>(0.f);
      }
      continue;  // uniform across the block: no barrier is skipped by part of it
    }
    CUDA_KERNEL_ASSERT(y >= 0 && y < V);
    MaxSum st{-INFINITY, 0.f};
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float x = row[v];
      if (x > st.m) {
        st.s = st.s * expf(st.m - x) + 1.f;  // exp(-inf) = 0 on the first element
        st.m = x;
      } else {
        st.s += expf(x - st.m);
      }
    }
    st = block_maxsum(st, shm_m, shm_s);
    const float lse = st.m + logf(st.s);
    const float ly = row[y];
    if (threadIdx.x == 0) atomicAdd(ce_sum, lse - ly);
    if (!need_grad) continue;
    const float inv = *inv_denom;
    float other = 0.f;  // sum of the non-target probabilities, on its own (no 1 - p_y cancellation)
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      if (v == y) continue;
      const float e = expf(row[v] - lse);
      other += e;
      prow[v] = static_cast<T>(e * inv);
    }
    other = block_sum(other, shm_s);  // every thread of the block reaches this barrier
    if (threadIdx.x == 0) prow[y] = static_cast<T>(-other * inv);
  }
}

// Masked squared error: fp32 block sums, one atomicAdd per block into sq_sum.
template <typename T>
__global__ void mse_sum_kernel(const T* __restrict__ img, const T* __restrict__ tgt, const bool* __restrict__ mask,
                               float* __restrict__ sq_sum, int64_t M, int64_t D) {
  __shared__ float shm[32];
  float acc = 0.f;
  const int64_t total = M * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (mask[i / D]) {
      const float d = static_cast<float>(img[i]) - static_cast<float>(tgt[i]);
      acc += d * d;
    }
  }
  acc = block_sum(acc, shm);
  if (threadIdx.x == 0) atomicAdd(sq_sum, acc);
}

// gi = 2 (img - tgt) / cnt on masked rows, 0 elsewhere; cnt read on the device.
template <typename T>
__global__ void mse_grad_kernel(const T* __restrict__ img, const T* __restrict__ tgt, const bool* __restrict__ mask,
                                const float* __restrict__ cnt, T* __restrict__ gi, int64_t M, int64_t D) {
  const float scale = 2.f / *cnt;
  const int64_t total = M * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = mask[i / D] ? static_cast<float>(img[i]) - static_cast<float>(tgt[i]) : 0.f;
    gi[i] = static_cast<T>(d * scale);
  }
}

using Out6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Out6 ce_mse_fwd_cuda(const at::Tensor& hidden_, const at::Tensor& weight_, const at::Tensor& labels_,
                     const at::Tensor& img_, const at::Tensor& img_target_, const at::Tensor& img_mask_, double lam,
                     int64_t ignore_index, std::optional<double> num_items, bool need_h, bool need_w, bool need_i,
                     int64_t chunk_rows) {
  const char* op = "ce_mse_fwd";
  MAGE_CHECK_CUDA(op, "hidden", hidden_);
  TORCH_CHECK(hidden_.dim() == 2 && weight_.dim() == 2, op, ": hidden must be (N, H), weight (V, H)");
  TORCH_CHECK(weight_.size(1) == hidden_.size(1), op, ": weight must be (V, ", hidden_.size(1), "), got ",
              weight_.sizes());
  const auto dt = hidden_.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": hidden must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(weight_.scalar_type() == dt, op, ": weight must be ", dt, ", got ", weight_.scalar_type());
  TORCH_CHECK(labels_.dim() == 1 && labels_.size(0) == hidden_.size(0), op, ": labels must be (", hidden_.size(0),
              "), got ", labels_.sizes());
  TORCH_CHECK(labels_.scalar_type() == at::kLong || labels_.scalar_type() == at::kInt, op,
              ": labels must be int64 or int32, got ", labels_.scalar_type());
  TORCH_CHECK(img_.dim() == 2 && img_target_.sizes() == img_.sizes(), op,
              ": img and img_target must be (M, D) of one shape");
  const auto idt = img_.scalar_type();
  TORCH_CHECK((idt == at::kFloat || idt == at::kBFloat16 || idt == at::kHalf) && img_target_.scalar_type() == idt,
              op, ": img and img_target must share one float dtype");
  TORCH_CHECK(img_mask_.dim() == 1 && img_mask_.size(0) == img_.size(0) && img_mask_.scalar_type() == at::kBool, op,
              ": img_mask must be (M,) bool");
  for (const at::Tensor* t : {&weight_, &labels_, &img_, &img_target_, &img_mask_}) {
    TORCH_CHECK(t->device() == hidden_.device(), op, ": all tensors must be on ", hidden_.device());
  }
  TORCH_CHECK(chunk_rows >= 1, op, ": chunk_rows must be >= 1, got ", chunk_rows);
  TORCH_CHECK(!num_items.has_value() || *num_items >= 0, op, ": num_items must be >= 0");

  const at::cuda::CUDAGuard guard(hidden_.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t N = hidden_.size(0), V = weight_.size(0);
  const at::Tensor hidden = hidden_.contiguous(), weight = weight_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  const auto f32 = hidden.options().dtype(at::kFloat);

  // 1 / denom as a device scalar: no host sync for the count of labelled tokens.
  at::Tensor denom = num_items.has_value() ? at::full({}, std::max(*num_items, 1.0), f32)
                                           : labels.ne(ignore_index).sum().clamp_min(1).to(at::kFloat);
  at::Tensor inv = denom.reciprocal();
  at::Tensor ce_sum = at::zeros({}, f32);
  at::Tensor gh = need_h ? at::empty_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor gw32 = need_w ? at::zeros(weight.sizes(), f32) : at::Tensor();
  const bool need_grad = need_h || need_w;
  const int64_t rows = std::min(std::max<int64_t>(N, 1), chunk_rows);

  for (int64_t s = 0; s < N && V > 0; s += rows) {
    const int64_t r = std::min(rows, N - s);
    const at::Tensor h = hidden.narrow(0, s, r);
    at::Tensor logits = mm_f32(h, weight.t()).contiguous();  // (r, V) fp32
    at::Tensor p = need_grad ? at::empty({r, V}, hidden.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ce_mse_fwd_cuda", [&] {
      ce_rows_kernel<scalar_t><<<static_cast<unsigned int>(std::min<int64_t>(r, 65535)), kThreads, 0, stream>>>(
          logits.data_ptr<float>(), labels.data_ptr<int64_t>() + s, need_grad ? p.data_ptr<scalar_t>() : nullptr,
          ce_sum.data_ptr<float>(), inv.data_ptr<float>(), r, V, ignore_index, need_grad);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (!need_grad) continue;
    if (need_h) gh.narrow(0, s, r).copy_(mm_f32(p, weight));
    if (need_w) addmm_f32_(gw32, p.t(), h);  // in place: no (V, H) temporary per chunk
  }
  if (need_h && V == 0) gh.zero_();
  at::Tensor ce = ce_sum * inv;

  const at::Tensor img = img_.contiguous(), img_target = img_target_.contiguous(), img_mask = img_mask_.contiguous();
  const int64_t M = img.size(0), Dm = img.size(1);
  at::Tensor sq = at::zeros({}, f32);
  at::Tensor cnt = (img_mask.sum().to(at::kFloat) * static_cast<double>(Dm)).clamp_min(1.0);
  at::Tensor gi = need_i ? at::empty_like(img) : at::empty({0}, img.options());
  if (M * Dm > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, idt, "ce_mse_mse_cuda", [&] {
      mse_sum_kernel<scalar_t><<<grid_for(M * Dm), kThreads, 0, stream>>>(
          img.data_ptr<scalar_t>(), img_target.data_ptr<scalar_t>(), img_mask.data_ptr<bool>(), sq.data_ptr<float>(),
          M, Dm);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (need_i) {
        mse_grad_kernel<scalar_t><<<grid_for(M * Dm), kThreads, 0, stream>>>(
            img.data_ptr<scalar_t>(), img_target.data_ptr<scalar_t>(), img_mask.data_ptr<bool>(),
            cnt.data_ptr<float>(), gi.data_ptr<scalar_t>(), M, Dm);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  at::Tensor mse = sq / cnt;
  at::Tensor loss = ce + mse * lam;
  at::Tensor gw = need_w ? gw32.to(weight.scalar_type()) : at::empty({0}, weight.options());
  return {loss, ce, mse, gh, gw, gi};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(mage_fast, CUDA, m) { m.impl("ce_mse_fwd", &cuda::ce_mse_fwd_cuda); }

}  // namespace mage_fast
