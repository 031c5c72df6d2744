// ce_mse row kernel on CUDA (mage_fast/ce_mse.h), one block per row of the chunk:
//   pass 1: online log-sum-exp over the vocabulary (each thread keeps a running (max, sum), merged
//           across the block); the row's CE term written to its own slot (no atomics: the sum over
//           rows runs afterwards in a fixed order);
//   pass 2 (only when a gradient is wanted): P = softmax - onehot in fp32, the target class as
//           -(sum of the other classes' p) (no cancellation for confident predictions), rounded
//           once to hidden's dtype. Ignored rows are written as zeros whatever their logits hold.

#include "common.cuh"
#include "mage_fast/ce_mse.h"

namespace mage_fast {
namespace ce_mse {
namespace {

using cuda::block_maxsum;
using cuda::block_sum;
using cuda::MaxSum;

template <typename T>
__global__ void rows_kernel(const float* __restrict__ logits, const int64_t* __restrict__ labels,
                            float* __restrict__ row_loss, T* __restrict__ p_out, int64_t rows, int64_t V,
                            int64_t ignore_index) {
  __shared__ float shm_m[32];
  __shared__ float shm_s[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t y = labels[r];
    const float* row = logits + r * V;
    T* prow = p_out != nullptr ? p_out + r * V : nullptr;
    if (y == ignore_index) {
      if (threadIdx.x == 0) row_loss[r] = 0.f;
      if (prow != nullptr) {
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
    if (threadIdx.x == 0) row_loss[r] = lse - row[y];
    if (prow == nullptr) continue;
    float other = 0.f;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      if (v == y) continue;
      const float e = expf(row[v] - lse);
      other += e;
      prow[v] = static_cast<T>(e);
    }
    other = block_sum(other, shm_s);  // every thread of the block reaches this barrier
    if (threadIdx.x == 0) prow[y] = static_cast<T>(-other);
  }
}

}  // namespace

void rows_cuda(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss, const at::Tensor& p,
               int64_t ignore_index) {
  const int64_t r = logits.size(0), V = logits.size(1);
  if (r == 0) return;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int blocks = static_cast<unsigned int>(std::min<int64_t>(r, 65535));
  const auto dt = p.defined() ? p.scalar_type() : at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ce_mse_rows_cuda", [&] {
    rows_kernel<scalar_t><<<blocks, cuda::kThreads, 0, stream>>>(
        logits.data_ptr<float>(), labels.data_ptr<int64_t>(), row_loss.data_ptr<float>(),
        p.defined() ? p.data_ptr<scalar_t>() : nullptr, r, V, ignore_index);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ce_mse

TORCH_LIBRARY_IMPL(mage_fast, CUDA, m) { m.impl("ce_mse_fwd", &ce_mse::fwd<ce_mse::rows_cuda>); }

}  // namespace mage_fast
