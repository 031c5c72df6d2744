// The one TORCH_LIBRARY(mage_fast) of the project: schemas of the low-level kernel ops.
//
// Implementations register per device with TORCH_LIBRARY_IMPL(mage_fast, CPU|CUDA, m) in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu. Fake (meta) kernels and autograd live in Python
// (mage_fast/ops/_ext.py), next to the top-level `torch.library.custom_op`s of the same namespace.
//
// Naming (DESIGN.md §2): `<op>_fwd` / `<op>_bwd` are kernel launchers taking and returning tensors;
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
  // Reserved for later kernel issues (define only when implemented):
  //   ian_projection_fwd / ian_projection_bwd, ce_mse_fwd.
}
