// The one TORCH_LIBRARY(mage_fast) of the project: schemas of the low-level kernel ops.
//
// Implementations register per device with TORCH_LIBRARY_IMPL(mage_fast, CPU|CUDA, m) in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu. Fake (meta) kernels and autograd live in Python, in each
// op's module (mage_fast/ops/<op>.py), next to the top-level `torch.library.custom_op` of the op.
//
// Naming: `<op>_fwd` / `<op>_bwd` are kernel launchers taking and returning tensors;
// `mage_fast::<op>` (defined in Python) is the differentiable op the model calls.

#include <Python.h>
#include <torch/library.h>

extern "C" {
// A bare `_C` module: importing it loads this .so, which runs the static TORCH_LIBRARY
// initialisers below (pattern from pytorch/extension-cpp). No Python bindings are needed: every
// op is reached through torch.ops.mage_fast.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "mage-fast C++/CUDA kernels; ops are registered under torch.ops.mage_fast",  // doc
      -1,       // no per-interpreter state
      nullptr,  // methods
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mage_fast, m) {
  // x (B, H*W, C) in row-major grid order -> y (B, ceil(H/k)*ceil(W/k), C): mean over each k x k
  // cell; edge cells average only the grid cells that exist. Accumulation in fp32 (fp64 for double).
  m.def("patch_pool_fwd(Tensor x, int H, int W, int k) -> Tensor");
  // grad_y (B, ceil(H/k)*ceil(W/k), C) -> grad_x (B, H*W, C): the adjoint of patch_pool_fwd.
  m.def("patch_pool_bwd(Tensor grad_y, int H, int W, int k) -> Tensor");

  // y = LN(GELU_erf(x w1^T + b1) w2^T + b2); x (N, C), w1 (D, C), w2 (D, D), vectors (D,), one
  // float dtype. -> (y (N, D), z1 (N, D), xhat (N, D), rstd (N,) fp32); the last three are empty
  // (0,) when `save` is false. GEMMs accumulate in fp32; the epilogues run in fp32.
  m.def(
      "ian_projection_fwd(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor ln_w, "
      "Tensor ln_b, float eps, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
  // Grads of (x, w1, b1, w2, b2, ln_w, ln_b) from what the forward saved; GELU(z1) is recomputed.
  // A grad whose `needs` flag is false comes back empty (0,).
  m.def(
      "ian_projection_bwd(Tensor dy, Tensor x, Tensor w1, Tensor w2, Tensor ln_w, Tensor z1, "
      "Tensor xhat, Tensor rstd, bool[7] needs) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // Fused lm_head + cross-entropy over token chunks of `chunk_rows` rows + masked MSE. hidden
  // (N, H), weight (V, H), labels (N,) int64/int32, img / img_target (M, D), img_mask (M,) bool.
  // -> (ce, mse) 0-dim fp32; P W (N, H) in hidden's dtype, P^T h (V, H) (fp32 for fp16, else
  // weight's dtype), img - img_target (M, D), each empty (0,) when its flag is false; (2,) fp32
  // scales (1 / denom, 2 / count). One chunk loop on both devices: csrc/ce_mse.cpp.
  m.def(
      "ce_mse_fwd(Tensor hidden, Tensor weight, Tensor labels, Tensor img, Tensor img_target, "
      "Tensor img_mask, int ignore_index, float? num_items, bool need_hidden_grad, "
      "bool need_weight_grad, bool need_img_grad, int chunk_rows) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
