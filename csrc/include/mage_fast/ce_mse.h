// ce_mse: the chunked forward both devices run (csrc/ce_mse.cpp) and its per-device row kernels
// (csrc/cpu/ce_mse.cpp, csrc/cuda/ce_mse.cu); each device file registers `fwd` with its own row
// kernel for the schema `mage_fast::ce_mse_fwd` (csrc/ops.cpp). Host-only (ATen tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace mage_fast {
namespace ce_mse {

using Out6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// One chunk of tokens. logits (r, V) fp32 contiguous; labels (r,) int64 in [0, V) or
// ignore_index; row_loss (r,) fp32 <- lse - logit[label] (0 when ignored); p (r, V) in hidden's
// dtype, or undefined when no gradient is wanted, <- softmax - onehot, unscaled, the target class
// as -(sum of the other classes' probabilities) in fp32, 0 on ignored rows (whatever the logits).
using RowKernel = void (*)(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss,
                           const at::Tensor& p, int64_t ignore_index);
void rows_cpu(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss, const at::Tensor& p,
              int64_t ignore_index);
void rows_cuda(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss, const at::Tensor& p,
               int64_t ignore_index);

// ce_mse_fwd's arguments (csrc/ops.cpp) with the row kernel `rows` of the tensors' device.
Out6 forward(RowKernel rows, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels,
             const at::Tensor& img, const at::Tensor& img_target, const at::Tensor& img_mask, int64_t ignore_index,
             std::optional<double> num_items, bool need_h, bool need_w, bool need_i, int64_t chunk_rows);

// The kernel a device registers for ce_mse_fwd: `forward` with that device's row kernel `Rows`.
template <RowKernel Rows>
Out6 fwd(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels, const at::Tensor& img,
         const at::Tensor& img_target, const at::Tensor& img_mask, int64_t ignore_index,
         std::optional<double> num_items, bool need_h, bool need_w, bool need_i, int64_t chunk_rows) {
  return forward(Rows, hidden, weight, labels, img, img_target, img_mask, ignore_index, num_items, need_h, need_w,
                 need_i, chunk_rows);
}

}  // namespace ce_mse
}  // namespace mage_fast
