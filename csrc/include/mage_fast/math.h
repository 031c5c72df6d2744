// Math shared by the CPU and CUDA kernels: one definition of each formula, so the twins cannot
// drift. Every function is `MAGE_HD`: `__host__ __device__` under nvcc, plain `inline` for the C++
// compiler of the CPU sources (which knows neither keyword).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MAGE_HD __host__ __device__ __forceinline__
#else
#define MAGE_HD inline
#endif

namespace mage_fast {
namespace math {

MAGE_HD float erf_of(float x) { return erff(x); }
MAGE_HD double erf_of(double x) { return erf(x); }
MAGE_HD float exp_of(float x) { return expf(x); }
MAGE_HD double exp_of(double x) { return exp(x); }

// Exact (erf) GELU: z * Phi(z).
template <typename A>
MAGE_HD A gelu(A z) {
  return A(0.5) * z * (A(1) + erf_of(z * A(0.70710678118654752440)));
}

// d/dz of exact GELU: Phi(z) + z * phi(z).
template <typename A>
MAGE_HD A gelu_grad(A z) {
  const A inv_sqrt_2pi = A(0.39894228040143267794);
  return A(0.5) * (A(1) + erf_of(z * A(0.70710678118654752440))) + z * exp_of(A(-0.5) * z * z) * inv_sqrt_2pi;
}

MAGE_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows/columns [start, end) of output cell `i` of a k-pooled axis of length n (ceil mode), in the
// index type I of the caller (int32 in the CUDA kernels where every index fits).
template <typename I>
struct Span {
  I start, end;
  MAGE_HD I size() const { return end - start; }
};

template <typename I>
MAGE_HD Span<I> pool_span(I i, I k, I n) {
  const I s = i * k;
  return {s, s + k < n ? s + k : n};
}

}  // namespace math
}  // namespace mage_fast
