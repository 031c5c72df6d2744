"""Compile every Triton kernel of mage_fast.kernels for sm_90 (H100/H200) without a GPU.

Run as a script in a process without TRITON_INTERPRET (the interpreter never builds the IR, so
it misses compile-mode errors: loop-carried types, constexpr branches, pointer types, shared
memory of the tile configs). Prints one line per kernel variant; exits non-zero on any failure.
"""

from __future__ import annotations

import os
import sys
import time

import triton
from mage_fast.kernels import _gemm, _launch, ce_mse, ian_projection, patch_pool
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(jit, sig: dict[str, str], consts: dict[str, object], **opts) -> None:
    """triton.compile `jit` (or an autotuned kernel's function) for TARGET; unnamed args are i32."""
    fn = jit.fn if hasattr(jit, "configs") else jit
    full = {n: "constexpr" if n in consts else sig.get(n, "i32") for n in fn.arg_names}
    t0 = time.time()
    k = triton.compile(ASTSource(fn, full, consts), target=TARGET, options=opts or None)
    print(f"ok {fn.__name__} {consts} cubin {len(k.asm['cubin'])} B {time.time() - t0:.1f}s", flush=True)


def main() -> int:
    assert not _launch.INTERPRET, "run without TRITON_INTERPRET"
    dt = "bf16"
    # The largest autotune tile of the GEMM, every epilogue (16-bit operands), plus exact fp32.
    tile = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}
    for epi in (0, 1, 2, 3):
        out = "fp32" if epi in (0, 3) else dt
        sig = {"a_ptr": f"*{dt}", "b_ptr": f"*{dt}", "c_ptr": f"*{out}", "bias_ptr": f"*{dt}", "aux_ptr": f"*{dt}",
               "part_ptr": "*fp32"}  # fmt: skip
        consts = {"EPI": epi, "WRITE_AUX": epi == 1, "DOT_F32": False, "PREC": "tf32", **tile}
        compile_kernel(_gemm._gemm_kernel, sig, consts, num_warps=8, num_stages=3)
    sig32 = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32", "bias_ptr": "*fp32", "aux_ptr": "*fp32",
             "part_ptr": "*fp32"}  # fmt: skip
    consts32 = {"EPI": 0, "WRITE_AUX": False, "DOT_F32": False, "PREC": "ieee",
                "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}  # fmt: skip
    compile_kernel(_gemm._gemm_kernel, sig32, consts32, num_warps=4, num_stages=3)
    pool = {"K": 2, "BLOCK_W": 4, "BLOCK_C": 512, "EVEN_HW": True, "MASKED": False}
    compile_kernel(patch_pool._patch_pool_fwd_kernel, {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}"}, pool, num_warps=8)
    compile_kernel(patch_pool._patch_pool_bwd_kernel, {"g_ptr": f"*{dt}", "dx_ptr": f"*{dt}"}, pool, num_warps=8)
    ln = {"z_ptr": "*fp32", "b2_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}", "y_ptr": f"*{dt}",
          "xhat_ptr": f"*{dt}", "rstd_ptr": "*fp32", "eps": "fp32"}  # fmt: skip
    compile_kernel(ian_projection._ian_projection_ln_fwd_kernel, ln, {"SAVE": True, "BLOCK_D": 8192}, num_warps=16)
    lnb = {"dy_ptr": f"*{dt}", "xhat_ptr": f"*{dt}", "rstd_ptr": "*fp32", "w_ptr": f"*{dt}", "dz_ptr": f"*{dt}",
           "part_ptr": "*fp32", "z1_ptr": f"*{dt}", "h_ptr": f"*{dt}"}  # fmt: skip
    compile_kernel(ian_projection._ian_projection_ln_bwd_kernel, lnb, {"NEED_DZ": True, "NEED_H": True, "BLOCK_D": 8192},
                   num_warps=16)  # fmt: skip
    ce = {"logits_ptr": "*fp32", "grad_ptr": f"*{dt}", "labels_ptr": "*i64", "loss_ptr": "*fp32", "inv_ptr": "*fp32",
          "ignore_index": "i64"}  # fmt: skip
    compile_kernel(ce_mse._ce_mse_ce_kernel, ce, {"NEED_GRAD": True, "BLOCK_V": 4096}, num_warps=8)
    mse = {"img_ptr": f"*{dt}", "tgt_ptr": f"*{dt}", "mask_ptr": "*i1", "sq_ptr": "*fp32", "grad_ptr": f"*{dt}",
           "cnt_ptr": "*fp32"}  # fmt: skip
    compile_kernel(ce_mse._ce_mse_mse_kernel, mse, {"NEED_GRAD": True, "BLOCK_D": 2048}, num_warps=4)
    return 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET to compile")
    sys.exit(main())
