// Argument checks of the kernel entry points, shared by csrc/cpu/* and csrc/cuda/*: one message
// per mistake, whichever device the op runs on. Host-only (ATen tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <utility>

namespace mage_fast {
namespace checks {

using NamedVec = std::pair<const char*, const at::Tensor*>;

// `t` lives on a device of type `type` (CPU or CUDA).
inline void device_type(const char* op, const char* name, const at::Tensor& t, c10::DeviceType type) {
  TORCH_CHECK(t.device().type() == type, op, ": ", name, " must be a ", c10::DeviceTypeName(type),
              " tensor, got ", t.device());
}

// fp32 / bf16 / fp16 (and fp64 on CPU, where the twins also serve as fp64 references).
inline void float_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto s = t.scalar_type();
  const bool ok = s == at::kFloat || s == at::kBFloat16 || s == at::kHalf || (s == at::kDouble && t.is_cpu());
  TORCH_CHECK(ok, op, ": ", name, " must be floating point (float32, bfloat16 or float16), got ", s);
}

// `t` has `ref`'s dtype and device.
inline void like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type() && t.device() == ref.device(), op, ": ", name, " must match ",
              "x's dtype (", ref.scalar_type(), ") and device (", ref.device(), "), got ", t.scalar_type(), " on ",
              t.device());
}

// ian_projection_fwd: x (N, C), w1 (D, C), w2 (D, D), the vectors (D,), one dtype and device.
inline void ian_projection_fwd(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                               std::initializer_list<NamedVec> vecs, double eps, c10::DeviceType type) {
  const char* op = "ian_projection_fwd";
  device_type(op, "x", x, type);
  float_dtype(op, "x", x);
  TORCH_CHECK(x.dim() == 2, op, ": x must be (N, C), got ", x.sizes());
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == x.size(1), op, ": w1 must be (D, ", x.size(1), "), got ", w1.sizes());
  const int64_t D = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == D && w2.size(1) == D, op, ": w2 must be (", D, ", ", D, "), got ",
              w2.sizes());
  like(op, "w1", w1, x);
  like(op, "w2", w2, x);
  for (const auto& [name, t] : vecs) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == D, op, ": ", name, " must be (", D, "), got ", t->sizes());
    like(op, name, *t, x);
  }
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
}

// ian_projection_bwd: dy, z1, xhat (N, D) in x's dtype, rstd (N,) fp32, ln_w (D,), one device.
inline void ian_projection_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& w2,
                               const at::Tensor& ln_w, const at::Tensor& z1, const at::Tensor& xhat,
                               const at::Tensor& rstd, c10::DeviceType type) {
  const char* op = "ian_projection_bwd";
  device_type(op, "x", x, type);
  TORCH_CHECK(x.dim() == 2 && w1.dim() == 2, op, ": x must be (N, C), w1 (D, C)");
  const int64_t N = x.size(0), D = w1.size(0);
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == N && dy.size(1) == D, op, ": dy must be (", N, ", ", D, "), got ",
              dy.sizes());
  TORCH_CHECK(z1.sizes() == dy.sizes() && xhat.sizes() == dy.sizes(), op,
              ": z1 and xhat must be (N, D) (was the forward run with save=True?)");
  TORCH_CHECK(rstd.dim() == 1 && rstd.size(0) == N && rstd.scalar_type() == at::kFloat, op,
              ": rstd must be (N,) fp32");
  TORCH_CHECK(rstd.device() == x.device(), op, ": rstd must be on ", x.device());
  TORCH_CHECK(ln_w.dim() == 1 && ln_w.size(0) == D, op, ": ln_w must be (", D, ")");
  for (const NamedVec& nt : {NamedVec{"dy", &dy}, NamedVec{"z1", &z1}, NamedVec{"xhat", &xhat},
                             NamedVec{"w1", &w1}, NamedVec{"w2", &w2}, NamedVec{"ln_w", &ln_w}}) {
    like(op, nt.first, *nt.second, x);
  }
}

// patch_pool_fwd / _bwd: t (B, tokens, C) floating point on a `type` device, grid and k positive.
inline void patch_pool(const at::Tensor& t, const char* op, const char* arg, int64_t H, int64_t W, int64_t k,
                       int64_t tokens, const char* tokens_desc, c10::DeviceType type) {
  device_type(op, arg, t, type);
  TORCH_CHECK(t.dim() == 3, op, ": ", arg, " must be 3-D (B, tokens, C), got ", t.dim(), "-D ", t.sizes());
  TORCH_CHECK(H >= 1 && W >= 1, op, ": grid (H, W) must be positive, got (", H, ", ", W, ")");
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK(t.size(1) == tokens, op, ": ", arg, ".size(1) must be ", tokens_desc, " = ", tokens, " for grid (", H,
              ", ", W, ") and k=", k, ", got ", t.size(1));
  float_dtype(op, arg, t);
}

}  // namespace checks
}  // namespace mage_fast
