// Shared helpers of the CUDA kernels: entry checks, launch sizes, fp32 block reductions, GEMM with
// fp32 output through ATen (cuBLAS/cuBLASLt).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace mage_fast {
namespace cuda {

constexpr int kThreads = 256;  // block size of the row and elementwise kernels (multiple of 32)

#define MAGE_CHECK_CUDA(op, name, t) \
  TORCH_CHECK((t).is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", (t).device())

// Grid for a grid-stride loop over n elements: enough blocks to fill the GPU, never 0.
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (n + threads - 1) / threads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(want, sms * 8)));
}

// body(i) for every i in [0, n) once over the whole grid (grid-stride loop); I is the index type
// (int32_t where every index fits: 64-bit division costs ~10x a 32-bit one).
template <typename I, typename F>
__device__ __forceinline__ void grid_stride(I n, F&& body) {
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I i = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x); i < n;
       i += stride) {
    body(i);
  }
}

// a @ b with an fp32 result: cuBLAS accumulates in fp32 for bf16/fp16 operands and `out_dtype`
// keeps that result instead of rounding it to the operand dtype.
inline at::Tensor mm_f32(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kFloat) return at::mm(a, b);
  if (a.scalar_type() == at::kDouble) return at::mm(a, b);
  return at::mm(a, b, at::kFloat);
}

// acc (fp32) += a @ b in place, accumulating in fp32 (cuBLAS with beta = 1): no temporary of acc's size.
inline void addmm_f32_(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == acc.scalar_type()) {
    acc.addmm_(a, b);
  } else {
    at::addmm_out(acc, acc, a, b, at::kFloat);
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum over the block of v (every thread gets the result). `shm` holds >= 32 T. blockDim.x must be
// a multiple of 32. Synchronises; safe to call repeatedly with the same buffer.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // shm may still be read by a previous call
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shm[lane] : T(0);
  return warp_sum(v);
}

// Online log-sum-exp state (max, sum of exp(x - max)) and its merge.
struct MaxSum {
  float m;
  float s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ MaxSum block_maxsum(MaxSum v, float* shm_m, float* shm_s) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    MaxSum o{__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off)};
    v = merge(v, o);
  }
  __syncthreads();
  if (lane == 0) {
    shm_m[warp] = v.m;
    shm_s[warp] = v.s;
  }
  __syncthreads();
  v = lane < nwarps ? MaxSum{shm_m[lane], shm_s[lane]} : MaxSum{-INFINITY, 0.f};
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    MaxSum o{__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off)};
    v = merge(v, o);
  }
  return v;
}

// Column sums of an (N, D) row-major array (optionally times a second one) in fp32: blocks of 32
// columns x 8 row lanes over a run of rows, a shared-memory reduction over the row lanes, and one
// partial row per block row in part (gridDim.y, D). No atomics: the partials are summed by
// at::sum in a fixed order, so the result is the same bits on every run.
template <typename A, typename B>
__global__ void colsum_kernel(const A* __restrict__ a, const B* __restrict__ b, float* __restrict__ part,
                              int64_t N, int64_t D, int64_t rows_per_block) {
  __shared__ float shm[8][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t r1 = min(N, r0 + rows_per_block);
  float acc = 0.f;
  if (col < D) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      float v = static_cast<float>(a[r * D + col]);
      if (b != nullptr) v *= static_cast<float>(b[r * D + col]);
      acc += v;
    }
  }
  shm[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < D) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += shm[i][threadIdx.x];
    part[static_cast<int64_t>(blockIdx.y) * D + col] = s;
  }
}

// Launch colsum_kernel on the current stream; returns the fp32 (D,) sums.
template <typename A, typename B>
at::Tensor colsum(const A* a, const B* b, int64_t N, int64_t D, const at::TensorOptions& opts) {
  if (N == 0 || D == 0) return at::zeros({D}, opts.dtype(at::kFloat));
  const int64_t rows_per_block = 256;
  const int64_t gy = std::min<int64_t>((N + rows_per_block - 1) / rows_per_block, 65535);
  const int64_t rpb = (N + gy - 1) / gy;
  at::Tensor part = at::empty({gy, D}, opts.dtype(at::kFloat));
  dim3 grid(static_cast<unsigned int>((D + 31) / 32), static_cast<unsigned int>(gy));
  dim3 block(32, 8);
  colsum_kernel<A, B><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(a, b, part.data_ptr<float>(), N, D,
                                                                             rpb);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return part.sum(0);
}

}  // namespace cuda
}  // namespace mage_fast
