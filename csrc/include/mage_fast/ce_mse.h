// ce_mse: the per-device row kernel behind the one native entry point (csrc/ce_mse.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace mage_fast {
namespace ce_mse {

// One chunk of tokens. logits (r, V) fp32 contiguous; labels (r,) int64 in [0, V) or
// ignore_index; row_loss (r,) fp32 <- lse - logit[label] (0 when ignored); p (r, V) in hidden's
// dtype, or undefined when no gradient is wanted, <- softmax - onehot, unscaled, the target class
// as -(sum of the other classes' probabilities) in fp32, 0 on ignored rows (whatever the logits).
void rows_cpu(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss, const at::Tensor& p,
              int64_t ignore_index);
void rows_cuda(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& row_loss, const at::Tensor& p,
               int64_t ignore_index);

}  // namespace ce_mse
}  // namespace mage_fast
