"""The sm_90 compile report (`make sm90-report`): every Triton kernel of mage_fast.kernels and every
launch configuration the ops can pick, compiled for sm_90 (H100/H200) without a GPU, with the
specialisations the GPU JIT applies: 16-byte alignment of pointers and divisibility by 16 of the
integer arguments (tt.divisibility), stride 1 of contiguous dims as a compile-time constant, bf16
and fp16 (and fp32 where an op takes it). ptxas -v (Triton's bundled ptxas) gives registers and
spills; Triton's metadata the shared memory. Prints one line per variant and fails on a spill in
a variant an op can pick or on shared memory above 227 KiB.

Run without TRITON_INTERPRET (the interpreter never builds the IR). `--smoke`: one variant per
kernel (the test in make test); `--ptxas-log LOG`: the same table for the CUDA kernels from an
nvcc -Xptxas -v log (`.ci/sm90_cuda.sh` compiles csrc/cuda with the CUDA build's flags).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import triton
import triton.knobs
from mage_fast.kernels import _gemm, _launch, ce_mse, ian_projection, patch_pool
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 227 * 1024
DTYPES = ("bf16", "fp16")


@dataclass
class Variant:
    """One compile: `fn` with argument types `sig` (unnamed args i32), constexprs `consts`, the
    integer/pointer args the JIT sees as divisible by 16 (`div`), launch options `opts`."""

    name: str
    fn: object
    sig: dict[str, str]
    consts: dict[str, object]
    opts: dict[str, int] = field(default_factory=dict)
    div: tuple[str, ...] = ()


def _compile(v: Variant) -> dict:
    fn = v.fn
    names = fn.arg_names
    full = {n: "constexpr" if n in v.consts else v.sig.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in v.div or full[n].startswith("*")}
    t0 = time.time()
    k = triton.compile(ASTSource(fn, full, v.consts, attrs), target=TARGET, options=v.opts or None)
    regs, spills = _ptxas_usage(k.asm["ptx"])
    return {"name": v.name, "regs": regs, "spills": spills, "smem": k.metadata.shared, "s": time.time() - t0}


def _ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers, spill bytes stored + loaded) of the PTX's kernel, from ptxas -v."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [triton.knobs.nvidia.ptxas.path, "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(d, "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    text = out.stderr + out.stdout
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return regs, spill


def gemm_variants(smoke: bool) -> Iterator[Variant]:
    """Every (tile, epilogue) that gemm_config can pick, bf16 and fp16 (fp32: its own tile)."""
    picks = {"wide": (0,), "square": (0, 1, 3), "narrow": (2,), "small": (0, 1, 2, 3), "fp32": (0, 1, 2, 3)}
    for tile, epis in picks.items():
        cfg = _launch.GEMM_TILES[tile]
        for dt in ("fp32",) if tile == "fp32" else DTYPES:
            for epi in epis:
                # Forward GEMMs take b = w.t() (stride 1 along K), backward ones row-major b.
                ones = {"s_ak": 1, "s_bk": 1} if epi in (0, 1) else {"s_ak": 1, "s_bn": 1}
                out = "fp32" if epi in (0, 3) else dt
                sig = {
                    "a_ptr": f"*{dt}",
                    "b_ptr": f"*{dt}",
                    "c_ptr": f"*{out}",
                    "bias_ptr": f"*{dt}",
                    "aux_ptr": f"*{dt}",
                    "part_ptr": "*fp32",
                }
                prec = "ieee" if dt == "fp32" else "tf32"
                consts = {
                    "EPI": epi,
                    "WRITE_AUX": epi == 1,
                    "DOT_F32": False,
                    "PREC": prec,
                    "s_cn": 1,
                    "s_xn": 1,
                    **ones,
                    **cfg.kwargs,
                }
                yield Variant(
                    f"gemm[{tile},{_launch.EPILOGUES[epi]},{dt}]",
                    _gemm._gemm_kernel,
                    sig,
                    consts,
                    {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
                    ("M", "N", "K", "s_am", "s_bn", "s_bk", "s_cm", "s_xm"),
                )
                if smoke:
                    return


def pool_variants(smoke: bool) -> Iterator[Variant]:
    """patch_pool at the layouts it picks for C = 1024 and 1152 (SigLIP), Wo = 12 and 7, k = 2 and 3."""
    for dt, eb in (("bf16", 2), ("fp16", 2), ("fp32", 4)):
        for c, wo, k, even in ((1024, 12, 2, True), (1152, 7, 2, True), (1024, 9, 3, False)):
            bw, bc, warps = _launch.pool_settings(c, wo, eb, interpret=False)
            masked = wo % bw != 0 or c % bc != 0
            tag = f"{dt},C={c},Wo={wo},k={k}"
            for kind in ("fwd", "bwd"):
                layout = {"K": k, "BLOCK_W": bw, "BLOCK_C": bc, "EVEN_HW": even, "MASKED": masked}
                # stride 1 along C, as the JIT specialises
                consts = {**layout, "BACKWARD": kind == "bwd", "s_ic": 1, "s_oc": 1}
                ptrs = dict.fromkeys(("in_ptr", "out_ptr"), f"*{dt}")
                ints = ("C", "s_ib", "s_it", "s_ob", "s_ot")
                yield Variant(
                    f"pool_{kind}[{tag}]", patch_pool._patch_pool_kernel, ptrs, consts, {"num_warps": warps}, ints
                )
            if smoke:
                return


def row_variants(smoke: bool) -> Iterator[Variant]:
    """The LayerNorm kernels at D = 4096 and 8192 (D = 5120 rounds up to it), the CE/MSE row
    kernels at their largest blocks (V tile 4096, D tile 2048)."""
    for dt, d in (("bf16", 4096),) if smoke else ((t, d) for t in DTYPES for d in (4096, 8192)):
        block, warps = _launch.ln_settings(d)
        ln = {
            "z_ptr": "*fp32",
            "b2_ptr": f"*{dt}",
            "w_ptr": f"*{dt}",
            "b_ptr": f"*{dt}",
            "y_ptr": f"*{dt}",
            "xhat_ptr": f"*{dt}",
            "rstd_ptr": "*fp32",
            "eps": "fp32",
        }
        yield Variant(
            f"ln_fwd[{dt},D={d}]",
            ian_projection._ian_projection_ln_fwd_kernel,
            ln,
            {"SAVE": True, "BLOCK_D": block},
            {"num_warps": warps},
            ("D", "s_z", "s_y", "s_x"),
        )
        lnb = {
            "dy_ptr": f"*{dt}",
            "xhat_ptr": f"*{dt}",
            "rstd_ptr": "*fp32",
            "w_ptr": f"*{dt}",
            "dz_ptr": f"*{dt}",
            "part_ptr": "*fp32",
            "z1_ptr": f"*{dt}",
            "h_ptr": f"*{dt}",
            "s_dyc": "i32",
        }
        if d > _launch.LN_BWD_MAX_D:  # never launched: wider rows take the torch formulas
            continue
        yield Variant(
            f"ln_bwd[{dt},D={d}]",
            ian_projection._ian_projection_ln_bwd_kernel,
            lnb,
            {"NEED_DZ": True, "NEED_H": True, "BLOCK_D": block},
            {"num_warps": warps},
            ("D", "s_dy", "s_x", "s_dz", "s_z1", "s_h"),
        )
        if d != 8192 and not smoke:
            continue
        ce = {
            "logits_ptr": "*fp32",
            "grad_ptr": f"*{dt}",
            "labels_ptr": "*i64",
            "loss_ptr": "*fp32",
            "inv_ptr": "*fp32",
            "ignore_index": "i64",
        }
        bv, cw = _launch.ce_settings(128256)
        yield Variant(f"ce[{dt}]", ce_mse._ce_mse_ce_kernel, ce, {"NEED_GRAD": True, "BLOCK_V": bv}, {"num_warps": cw})
        mse = {
            "img_ptr": f"*{dt}",
            "tgt_ptr": f"*{dt}",
            "mask_ptr": "*i1",
            "sq_ptr": "*fp32",
            "grad_ptr": f"*{dt}",
            "cnt_ptr": "*fp32",
        }
        bd, mw = _launch.mse_settings(4096)
        yield Variant(
            f"mse[{dt}]", ce_mse._ce_mse_mse_kernel, mse, {"NEED_GRAD": True, "BLOCK_D": bd}, {"num_warps": mw}
        )


def ptxas_report(log: str) -> int:
    """Registers, spills and shared memory per CUDA kernel from an nvcc -Xptxas -v log."""
    entries: list[dict] = []
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '([^']+)' for 'sm_90", line):
            entries.append({"name": m.group(1), "spills": 0, "regs": 0, "smem": 0})
        elif entries and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            entries[-1]["spills"] = int(m.group(1)) + int(m.group(2))
        elif entries and (m := re.search(r"Used (\d+) registers", line)):
            entries[-1]["regs"] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            entries[-1]["smem"] = int(sm.group(1)) if sm else 0
    names = [
        re.sub(r"^void |mage_fast::|cuda::|\(anonymous namespace\)::|c10::", "", n)
        for n in _demangle([e["name"] for e in entries])
    ]
    bad = []
    print(f"{'CUDA kernel (sm_90)':<70} {'regs':>5} {'spill B':>8} {'smem KiB':>9}")
    for e, name in zip(entries, names):
        fail = e["spills"] > 0 or e["smem"] > SMEM_LIMIT
        bad += [name] if fail else []
        print(f"{name[:70]:<70} {e['regs']:>5} {e['spills']:>8} {e['smem'] / 1024:>9.1f}{'  <-- FAIL' if fail else ''}")
    if not entries:
        print("sm90-report: no kernel in the ptxas log")
        return 1
    print(f"sm90-report: {len(entries)} CUDA kernels; {'FAILED: ' + ', '.join(bad) if bad else 'no spills'}")
    return 1 if bad else 0


def _demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return out.stdout.splitlines() or names
    except (OSError, subprocess.CalledProcessError):
        return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="one variant per kernel")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--ptxas-log", default=None, help="report the CUDA kernels of this nvcc -Xptxas -v log")
    args = p.parse_args(argv)
    if args.ptxas_log:
        with open(args.ptxas_log) as f:
            return ptxas_report(f.read())
    assert not _launch.INTERPRET, "run without TRITON_INTERPRET"
    t0 = time.time()
    variants = [*gemm_variants(args.smoke), *pool_variants(args.smoke), *row_variants(args.smoke)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(_compile, variants))
    bad = []
    print(f"{'kernel variant (sm_90)':<44} {'regs':>5} {'spill B':>8} {'smem KiB':>9} {'s':>5}")
    for r in results:
        flag = ""
        if r["spills"] or r["smem"] > SMEM_LIMIT:
            flag = "  <-- FAIL"
            bad.append(r["name"])
        print(f"ok {r['name']:<41} {r['regs']:>5} {r['spills']:>8} {r['smem'] / 1024:>9.1f} {r['s']:>5.1f}{flag}")
    print(
        f"sm90-report: {len(results)} Triton variants in {time.time() - t0:.0f} s; "
        f"{'FAILED: ' + ', '.join(bad) if bad else 'no spills, shared memory within 227 KiB'}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET to compile")
    sys.exit(main())
