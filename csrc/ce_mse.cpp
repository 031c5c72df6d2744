// ce_mse_fwd's chunk loop, one function for the "cpp" (CPU) and "cuda" (CUDA) backends; each
// device registers it with its row kernel (mage_fast/ce_mse.h).
//
// Contract of mage_fast/ops/ce_mse.py (its module docstring): tokens are walked in chunks of
// `chunk_rows` rows (the Python planner's, mage_fast/ops/ce_mse_plan.py), so only a (rows, V) fp32
// logits buffer and its P ever exist (never N x V). Per chunk: logits = h W^T (GEMM, fp32
// result), the device's row kernel for the CE terms and P = softmax - onehot (unscaled), then
// grad_hidden = P W and grad_weight += P^T h (ignored rows of h selected to 0), accumulated in fp32. The image term
// stores img - img_target on masked rows. 1/denom and 2/count come back as a (2,) fp32 tensor for
// the autograd backward to apply in fp32. Sums: per-row partials summed by ATen in a fixed order.
// The GEMMs are ATen's (cuBLAS on CUDA with fp32 output; CPU widens the operands to fp32).

// Tensor methods (sub, mul, div) rather than operators: ATen/TensorOperators.h declares every
// operator of ATen, most of a translation unit's compile time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "mage_fast/ce_mse.h"

namespace mage_fast {
namespace ce_mse {
namespace {

constexpr const char* kOp = "ce_mse_fwd";

bool is_float3(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

void check_args(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels, const at::Tensor& img,
                const at::Tensor& img_target, const at::Tensor& img_mask, std::optional<double> num_items,
                int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2, kOp, ": hidden must be (N, H), weight (V, H)");
  TORCH_CHECK(weight.size(1) == hidden.size(1), kOp, ": weight must be (V, ", hidden.size(1), "), got ",
              weight.sizes());
  TORCH_CHECK(is_float3(hidden.scalar_type()) && weight.scalar_type() == hidden.scalar_type(), kOp,
              ": hidden and weight must share one dtype of float32, bfloat16, float16");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == hidden.size(0), kOp, ": labels must be (", hidden.size(0),
              "), got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt, kOp,
              ": labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK(img.dim() == 2 && img_target.sizes() == img.sizes(), kOp,
              ": img and img_target must be (M, D) of one shape");
  TORCH_CHECK(is_float3(img.scalar_type()) && img_target.scalar_type() == img.scalar_type(), kOp,
              ": img and img_target must share one dtype of float32, bfloat16, float16");
  TORCH_CHECK(img_mask.dim() == 1 && img_mask.size(0) == img.size(0) && img_mask.scalar_type() == at::kBool, kOp,
              ": img_mask must be (M,) bool");
  for (const at::Tensor* t : {&weight, &labels, &img, &img_target, &img_mask}) {
    TORCH_CHECK(t->device() == hidden.device(), kOp, ": all tensors must be on ", hidden.device());
  }
  TORCH_CHECK(chunk_rows >= 1, kOp, ": chunk_rows must be >= 1, got ", chunk_rows);
  TORCH_CHECK(!num_items.has_value() || *num_items >= 0, kOp, ": num_items must be >= 0");
}

// On CPU the ids are checked on the host (the row kernel indexes memory with them); on CUDA the
// row kernel asserts on the device (no host sync).
void check_labels_cpu(const at::Tensor& labels, int64_t V, int64_t ignore_index) {
  const int64_t* lp = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.size(0); ++i) {
    TORCH_CHECK(lp[i] == ignore_index || (lp[i] >= 0 && lp[i] < V), kOp, ": label ", lp[i], " at position ", i,
                " is out of bounds: ids must be in [0, ", V, ") or ignore_index (", ignore_index, ")");
  }
}

// a @ b as fp32 with fp32 accumulation: cuBLAS keeps the fp32 result of 16-bit operands; the CPU
// widens the operands (exactly) instead.
at::Tensor mm_f32(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat) return at::mm(a, b);
  if (a.is_cuda() && a.scalar_type() == b.scalar_type()) return at::mm(a, b, at::kFloat);
  return at::mm(a.to(at::kFloat), b.to(at::kFloat));
}

// acc (fp32) += a @ b in place: no temporary of acc's (V, H) size.
void addmm_f32_(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat) {
    acc.addmm_(a, b);
  } else if (a.is_cuda() && a.scalar_type() == b.scalar_type()) {
    at::addmm_out(acc, acc, a, b, at::kFloat);
  } else {
    acc.addmm_(a.to(at::kFloat), b.to(at::kFloat));
  }
}

// Masked MSE: (mse, img - img_target on masked rows, 2 / count), count = masked rows x D (>= 1).
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_mse(const at::Tensor& img, const at::Tensor& img_target,
                                                         const at::Tensor& img_mask, bool need_i) {
  const at::Tensor diff =
      at::where(img_mask.unsqueeze(1), img.to(at::kFloat).sub(img_target.to(at::kFloat)), at::Scalar(0.0));
  const at::Tensor cnt = img_mask.sum().to(at::kFloat).mul(static_cast<double>(img.size(1))).clamp_min(1.0);
  at::Tensor gi = need_i ? diff.to(img.scalar_type()) : at::empty({0}, img.options());
  return {diff.mul(diff).sum().div(cnt), gi, cnt.reciprocal().mul(2.0)};
}

}  // namespace

// -> (ce, mse) 0-dim fp32; P W (N, H) in hidden's dtype, P^T h (V, H) (fp32 for fp16, else
// weight's dtype), img - img_target (M, D), each empty (0,) when its flag is false; (2,) fp32
// scales (1 / denom, 2 / count).
Out6 forward(RowKernel rows, const at::Tensor& hidden_, const at::Tensor& weight_, const at::Tensor& labels_,
             const at::Tensor& img, const at::Tensor& img_target, const at::Tensor& img_mask, int64_t ignore_index,
             std::optional<double> num_items, bool need_h, bool need_w, bool need_i, int64_t chunk_rows) {
  check_args(hidden_, weight_, labels_, img, img_target, img_mask, num_items, chunk_rows);
  const c10::DeviceGuard guard(hidden_.device());
  const int64_t N = hidden_.size(0), V = weight_.size(0);
  const at::Tensor hidden = hidden_.contiguous(), weight = weight_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  if (labels.is_cpu()) check_labels_cpu(labels, V, ignore_index);
  const auto f32 = hidden.options().dtype(at::kFloat);
  const at::Tensor ignored = labels.eq(ignore_index);
  const at::Tensor denom = num_items.has_value() ? at::full({}, std::max(*num_items, 1.0), f32)
                                                 : ignored.logical_not().sum().clamp_min(1).to(at::kFloat);
  const at::Tensor inv = denom.reciprocal();
  at::Tensor row_loss = at::zeros({N}, f32);
  at::Tensor gh = need_h ? at::empty_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor gw32 = need_w ? at::zeros(weight.sizes(), f32) : at::Tensor();
  const at::Tensor w_op = hidden.is_cuda() ? weight : weight.to(at::kFloat);  // CPU: widened once
  const bool need_grad = need_h || need_w;
  const int64_t rows_per = std::min(std::max<int64_t>(N, 1), chunk_rows);
  for (int64_t s = 0; s < N && V > 0; s += rows_per) {
    const int64_t r = std::min(rows_per, N - s);
    const at::Tensor h = hidden.narrow(0, s, r), lab = labels.narrow(0, s, r);
    const at::Tensor logits = mm_f32(h, w_op.t()).contiguous();  // (r, V) fp32
    const at::Tensor p = need_grad ? at::empty({r, V}, hidden.options()) : at::Tensor();
    rows(logits, lab, row_loss.narrow(0, s, r), p, ignore_index);
    if (need_h) gh.narrow(0, s, r).copy_(mm_f32(p, w_op));
    if (need_w) addmm_f32_(gw32, p.t(), h.masked_fill(ignored.narrow(0, s, r).unsqueeze(1), 0.0));
  }
  if (need_h && V == 0) gh.zero_();
  const at::Tensor ce = row_loss.sum().mul(inv);
  auto [mse, gi, s_mse] = masked_mse(img.contiguous(), img_target.contiguous(), img_mask.contiguous(), need_i);
  const auto dt = hidden.scalar_type();
  at::Tensor gw = need_w ? (dt == at::kHalf ? gw32 : gw32.to(dt)) : at::empty({0}, weight.options());
  return {ce, mse, gh, gw, gi, at::stack({inv, s_mse})};
}

}  // namespace ce_mse
}  // namespace mage_fast
