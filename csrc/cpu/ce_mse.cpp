// CPU twin of ce_mse: fused lm_head + cross-entropy over token chunks + masked image MSE.
//
// Semantics of DESIGN.md §3 and the torch backend (mage_fast/ops/ce_mse.py): tokens are walked in
// chunks of `chunk_rows` rows, so only a (rows, V) fp32 logits buffer ever exists (never N x V);
// per row an online log-sum-exp (one pass: running max and rescaled sum), the CE term, and, when a
// gradient is needed, d ce/d logits = (softmax - onehot) / denom in fp32 (the target class as minus
// the sum of the other classes' probabilities: no cancellation for confident predictions), rounded
// once to hidden's dtype as the GEMM operand. grad_hidden is written per chunk; grad_weight accumulates over chunks in fp32 and
// is rounded once at the end. Ignored rows (ignore_index) contribute nothing; denom = num_items if
// given else the labelled tokens (at least 1), so an all-ignored batch gives ce = 0, zero grads.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

namespace mage_fast {
namespace {

using Out6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Out6 ce_mse_fwd_cpu(const at::Tensor& hidden_, const at::Tensor& weight, const at::Tensor& labels_,
                    const at::Tensor& img_, const at::Tensor& img_target_, const at::Tensor& img_mask_,
                    double lam, int64_t ignore_index, std::optional<double> num_items, bool need_h,
                    bool need_w, bool need_i, int64_t chunk_rows) {
  const char* op = "ce_mse_fwd";
  TORCH_CHECK(hidden_.device().is_cpu(), op, ": hidden must be a CPU tensor, got ", hidden_.device());
  TORCH_CHECK(hidden_.dim() == 2 && weight.dim() == 2, op, ": hidden must be (N, H), weight (V, H)");
  TORCH_CHECK(weight.size(1) == hidden_.size(1), op, ": weight must be (V, ", hidden_.size(1), "), got ",
              weight.sizes());
  TORCH_CHECK(at::isFloatingType(hidden_.scalar_type()) && weight.scalar_type() == hidden_.scalar_type(),
              op, ": hidden and weight must share one float dtype");
  TORCH_CHECK(labels_.dim() == 1 && labels_.size(0) == hidden_.size(0), op, ": labels must be (",
              hidden_.size(0), "), got ", labels_.sizes());
  TORCH_CHECK(labels_.scalar_type() == at::kLong || labels_.scalar_type() == at::kInt, op,
              ": labels must be int64 or int32, got ", labels_.scalar_type());
  TORCH_CHECK(img_.dim() == 2 && img_target_.sizes() == img_.sizes(), op,
              ": img and img_target must be (M, D) of one shape");
  TORCH_CHECK(at::isFloatingType(img_.scalar_type()) && img_target_.scalar_type() == img_.scalar_type(), op,
              ": img and img_target must share one float dtype");
  TORCH_CHECK(img_mask_.dim() == 1 && img_mask_.size(0) == img_.size(0) && img_mask_.scalar_type() == at::kBool,
              op, ": img_mask must be (M,) bool");
  for (const at::Tensor* t : {&weight, &labels_, &img_, &img_target_, &img_mask_}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": all tensors must be on CPU");
  }
  TORCH_CHECK(chunk_rows >= 1, op, ": chunk_rows must be >= 1, got ", chunk_rows);
  TORCH_CHECK(!num_items.has_value() || *num_items >= 0, op, ": num_items must be >= 0");

  const int64_t N = hidden_.size(0), V = weight.size(0);
  const auto dt = hidden_.scalar_type();
  const auto acc = at::toOpMathType(dt);
  const at::Tensor hidden = hidden_.contiguous();
  const at::Tensor labels = labels_.to(at::kLong).contiguous();
  const int64_t* lp = labels.data_ptr<int64_t>();

  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (lp[i] == ignore_index) continue;
    TORCH_CHECK(lp[i] >= 0 && lp[i] < V, op, ": label ", lp[i], " at position ", i,
                " is out of bounds: ids must be in [0, ", V, ") or ignore_index (", ignore_index, ")");
    ++count;
  }
  const double denom = num_items.has_value() ? std::max(*num_items, 1.0) : std::max<double>(count, 1.0);
  const double inv = 1.0 / denom;

  at::Tensor gh = need_h ? at::empty_like(hidden) : at::empty({0}, hidden.options());
  at::Tensor gw32 = need_w ? at::zeros(weight.sizes(), weight.options().dtype(acc)) : at::Tensor();
  const at::Tensor w_acc = weight.to(acc).contiguous();  // widened once, reused by every chunk
  const bool need_grad = need_h || need_w;
  std::vector<double> row_loss(N, 0.0);
  const int64_t rows = std::min(std::max<int64_t>(N, 1), chunk_rows);

  for (int64_t s = 0; s < N; s += rows) {
    const int64_t r = std::min(rows, N - s);
    const at::Tensor h = hidden.narrow(0, s, r);
    at::Tensor logits = at::mm(h.to(acc), w_acc.t()).contiguous();  // (r, V) fp32, the only big buffer
    at::Tensor p_op = need_grad ? at::empty({r, V}, hidden.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ce_mse_fwd_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      A* lg = logits.data_ptr<A>();
      scalar_t* pp = need_grad ? p_op.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, r, 1, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t y = lp[s + i];
          const A* row = lg + i * V;
          scalar_t* prow = need_grad ? pp + i * V : nullptr;
          if (y == ignore_index) {
            if (need_grad) std::fill(prow, prow + V, static_cast<scalar_t>(0));
            continue;
          }
          // Online log-sum-exp: one pass, the running sum rescaled when the max grows.
          A m = -std::numeric_limits<A>::infinity(), l = 0;
          for (int64_t v = 0; v < V; ++v) {
            const A x = row[v];
            if (x > m) {
              l = l * std::exp(m - x) + A(1);
              m = x;
            } else {
              l += std::exp(x - m);
            }
          }
          const A lse = m + std::log(l);
          row_loss[s + i] = static_cast<double>(lse - row[y]);
          if (!need_grad) continue;
          // Target class: p_y - 1 = -(sum of the other classes' p), summed on its own in fp32, so a
          // confident prediction keeps its small gradient (1 - p_y would cancel to 0 or an ulp).
          const A sc = static_cast<A>(inv);
          A other = 0;
          for (int64_t v = 0; v < y; ++v) {
            const A e = std::exp(row[v] - lse);
            other += e;
            prow[v] = static_cast<scalar_t>(e * sc);
          }
          for (int64_t v = y + 1; v < V; ++v) {
            const A e = std::exp(row[v] - lse);
            other += e;
            prow[v] = static_cast<scalar_t>(e * sc);
          }
          prow[y] = static_cast<scalar_t>(-other * sc);
        }
      });
    });
    if (!need_grad) continue;
    const at::Tensor p_acc = p_op.to(acc);  // exact widening of the rounded operand
    if (need_h) gh.narrow(0, s, r).copy_(at::mm(p_acc, w_acc));
    if (need_w) gw32.addmm_(p_acc.t(), h.to(acc));
  }
  double ce_sum = 0.0;
  for (int64_t i = 0; i < N; ++i) ce_sum += row_loss[i];  // fixed order
  const double ce = ce_sum * inv;

  // Masked MSE: mean over the (masked rows x D) elements, 0 when none.
  const at::Tensor img = img_.contiguous(), img_target = img_target_.contiguous();
  const at::Tensor img_mask = img_mask_.contiguous();
  const int64_t M = img.size(0), Dm = img.size(1);
  const bool* mp = img_mask.data_ptr<bool>();
  int64_t masked = 0;
  for (int64_t i = 0; i < M; ++i) masked += mp[i] ? 1 : 0;
  const double cnt = std::max<double>(static_cast<double>(masked) * static_cast<double>(Dm), 1.0);
  at::Tensor gi = need_i ? at::empty_like(img) : at::empty({0}, img.options());
  std::vector<double> row_sq(M, 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, img.scalar_type(), "ce_mse_fwd_cpu_mse", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* ip = img.data_ptr<scalar_t>();
    const scalar_t* tp = img_target.data_ptr<scalar_t>();
    scalar_t* gp = need_i ? gi.data_ptr<scalar_t>() : nullptr;
    const A g_scale = static_cast<A>(2.0 / cnt);
    at::parallel_for(0, M, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        A sq = 0;
        for (int64_t c = 0; c < Dm; ++c) {
          const A d = mp[i] ? static_cast<A>(ip[i * Dm + c]) - static_cast<A>(tp[i * Dm + c]) : A(0);
          sq += d * d;
          if (need_i) gp[i * Dm + c] = static_cast<scalar_t>(d * g_scale);
        }
        row_sq[i] = static_cast<double>(sq);
      }
    });
  });
  double sq_sum = 0.0;
  for (int64_t i = 0; i < M; ++i) sq_sum += row_sq[i];
  const double mse = sq_sum / cnt;

  const auto f32 = hidden.options().dtype(at::kFloat);
  const float ce_f = static_cast<float>(ce), mse_f = static_cast<float>(mse);
  at::Tensor loss_t = at::scalar_tensor(ce_f + static_cast<float>(lam) * mse_f, f32);
  at::Tensor gw = need_w ? gw32.to(weight.scalar_type()) : at::empty({0}, weight.options());
  return {loss_t, at::scalar_tensor(ce_f, f32), at::scalar_tensor(mse_f, f32), gh, gw, gi};
}

}  // namespace

TORCH_LIBRARY_IMPL(mage_fast, CPU, m) { m.impl("ce_mse_fwd", &ce_mse_fwd_cpu); }

}  // namespace mage_fast
