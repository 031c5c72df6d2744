// ce_mse row kernel on CPU (mage_fast/ce_mse.h): per row an online log-sum-exp (one pass: running
// max and rescaled sum), the CE term, and P = softmax - onehot in fp32, rounded once to hidden's
// dtype. ce_mse_fwd's CPU kernel is the shared chunk loop (csrc/ce_mse.cpp) with this row kernel.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "mage_fast/ce_mse.h"

namespace mage_fast {
namespace ce_mse {

void rows_cpu(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss, const at::Tensor& p,
              int64_t ignore_index) {
  const int64_t r = logits.size(0), V = logits.size(1);
  const float* lg = logits.data_ptr<float>();
  const int64_t* lp = labels.data_ptr<int64_t>();
  float* loss = row_loss.data_ptr<float>();
  const bool need_grad = p.defined();
  const auto dt = need_grad ? p.scalar_type() : at::kFloat;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ce_mse_rows_cpu", [&] {
    scalar_t* pp = need_grad ? p.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, r, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t y = lp[i];
        const float* row = lg + i * V;
        scalar_t* prow = need_grad ? pp + i * V : nullptr;
        if (y == ignore_index) {  // a select: whatever the logits hold, the row contributes 0
          loss[i] = 0.f;
          if (need_grad) std::fill(prow, prow + V, static_cast<scalar_t>(0));
          continue;
        }
        float m = -std::numeric_limits<float>::infinity(), l = 0.f;
        for (int64_t v = 0; v < V; ++v) {
          const float x = row[v];
          if (x > m) {
            l = l * std::exp(m - x) + 1.f;
            m = x;
          } else {
            l += std::exp(x - m);
          }
        }
        const float lse = m + std::log(l);
        loss[i] = lse - row[y];
        if (!need_grad) continue;
        // Target class: p_y - 1 = -(sum of the other classes' p), summed on its own in fp32, so a
        // confident prediction keeps its small gradient (1 - p_y would cancel to 0 or an ulp).
        float other = 0.f;
        for (int64_t v = 0; v < V; ++v) {
          if (v == y) continue;
          const float e = std::exp(row[v] - lse);
          other += e;
          prow[v] = static_cast<scalar_t>(e);
        }
        prow[y] = static_cast<scalar_t>(-other);
      }
    });
  });
}

}  // namespace ce_mse

TORCH_LIBRARY_IMPL(mage_fast, CPU, m) { m.impl("ce_mse_fwd", &ce_mse::fwd<ce_mse::rows_cpu>); }

}  // namespace mage_fast
