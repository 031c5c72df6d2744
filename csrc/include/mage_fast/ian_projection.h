// What the CPU and CUDA twins of ian_projection share on the host: the backward's prepared inputs
// (checked, contiguous, the flags that decide which passes run) and the forward's outputs when
// nothing is saved. Host-only (ATen tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

#include "mage_fast/checks.h"

namespace mage_fast {

using Grads7 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The saved tensors and dy, contiguous; the LayerNorm backward (dz2) runs when any grad upstream
// of it is needed, the GELU backward (dz1) when one of x, w1, b1 is.
struct IanBwdInputs {
  at::Tensor dy, xhat, z1, rstd, ln_w;
  bool need_dz2, need_dz1;
};

inline IanBwdInputs ian_projection_bwd_inputs(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1,
                                              const at::Tensor& w2, const at::Tensor& ln_w, const at::Tensor& z1,
                                              const at::Tensor& xhat, const at::Tensor& rstd,
                                              const std::array<bool, 7>& needs, c10::DeviceType type) {
  checks::ian_projection_bwd(dy, x, w1, w2, ln_w, z1, xhat, rstd, type);
  const auto [nx, nw1, nb1, nw2, nb2, nlw, nlb] = needs;
  const bool need_dz1 = nx || nw1 || nb1;
  return {dy.contiguous(), xhat.contiguous(), z1.contiguous(), rstd.contiguous(), ln_w.contiguous(),
          need_dz1 || nw2 || nb2, need_dz1};
}

// The forward's (y, z1, xhat, rstd) when `save` is false: distinct empties, as every backend
// returns them (outputs of a custom op must not alias).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ian_projection_unsaved(const at::Tensor& y,
                                                                                         const at::Tensor& x) {
  return {y, at::empty({0}, x.options()), at::empty({0}, x.options()), at::empty({0}, x.options().dtype(at::kFloat))};
}

}  // namespace mage_fast
