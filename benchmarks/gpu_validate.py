"""`make gpu-check`'s correctness gate: every op on one backend against a float64 reference.

    python -m benchmarks.gpu_validate --backend triton --size device --out checks.jsonl

For each op, inputs are drawn once in fp32 and rounded to bf16; three runs follow on them:
the op with `--backend` in bf16, the naive reference (mage_fast/ops/reference.py) in bf16 (its
own low-precision error) and the reference in float64 on the same rounded inputs (the truth).
Each output and input gradient passes when |op - ref64| <= 2 |ref_bf16 - ref64| + atol (max
norms; atol = 1e-3 of the truth's largest magnitude), the op tests' rule at real sizes. One JSON
line per quantity, then one per op with `"passed"`: benchmarks/gpu_winners.py lets only a backend
whose op passed here into validated.json. A backend that crashes writes no "passed" line.

Sizes: `device`, the production shapes (ce_mse N=7000, H=4096, V=128256: two GPU chunks, 3584
and 3416 rows; ian_projection C=1024, D=4096, 8 images of 576 tokens; patch_pool 64 images, 24 x 24,
C=1024); `smoke`, small odd shapes that the CPU (and the Triton interpreter) runs in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# mage_fast is imported inside the functions: `--env` reports a failed build instead of crashing.

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "device": {
        "ce_mse": {"N": 7000, "H": 4096, "V": 128256, "M": 8},
        "ian_projection": {"N": 8 * 576, "C": 1024, "D": 4096},
        "patch_pool": {"B": 64, "G": 24, "C": 1024},
    },
    "smoke": {
        "ce_mse": {"N": 67, "H": 48, "V": 515, "M": 3},
        "ian_projection": {"N": 37, "C": 48, "D": 80},
        "patch_pool": {"B": 2, "G": 7, "C": 40},
    },
}
FACTOR, ATOL_REL = 2.0, 1e-3


@dataclass
class Case:
    """An op at one size: fp32 master inputs, which of them get gradients, and how to call it."""

    op: str
    shape: dict[str, int]
    inputs: list[torch.Tensor]
    diff: list[int]  # indices of `inputs` whose gradient is checked
    names: list[str]  # output names, then one per index of `diff`
    call: Callable[..., torch.Tensor]  # (inputs..., backend or None for the reference) -> objective


def _ce_mse_case(s: dict[str, int], dev: torch.device) -> Case:
    from mage_fast.ops import ce_mse
    from mage_fast.ops.reference import ce_mse_ref

    N, H, V, M = s["N"], s["H"], s["V"], s["M"]
    labels = torch.randint(0, V, (N,), device=dev)
    labels[::8] = -100
    mask = torch.ones(M, dtype=torch.bool, device=dev)
    mask[-1] = False
    ins = [torch.randn(N, H, device=dev), torch.randn(V, H, device=dev) * H**-0.5, labels]
    ins += [torch.randn(M, H, device=dev), torch.randn(M, H, device=dev), mask]

    def call(h, w, lab, img, tgt, m, backend=None):
        if backend is None:
            return torch.stack(ce_mse_ref(h, w, lab, img, tgt, m, 0.5))  # (loss, ce, mse), fp32
        return torch.stack(ce_mse(h, w, lab, img, tgt, m, 0.5, backend=backend))

    names = ["loss_ce_mse", "grad_hidden", "grad_weight", "grad_img"]
    return Case("ce_mse", s, ins, [0, 1, 3], names, call)


def _ian_case(s: dict[str, int], dev: torch.device) -> Case:
    from mage_fast.ops import ian_projection
    from mage_fast.ops.reference import ian_projection_ref

    N, C, D = s["N"], s["C"], s["D"]
    ins = [torch.randn(N, C, device=dev), torch.randn(D, C, device=dev) * C**-0.5, torch.randn(D, device=dev) * 0.1]
    ins += [torch.randn(D, D, device=dev) * D**-0.5, torch.randn(D, device=dev) * 0.1]
    ins += [1 + 0.1 * torch.randn(D, device=dev), 0.1 * torch.randn(D, device=dev)]

    def call(*args, backend=None):
        return ian_projection_ref(*args) if backend is None else ian_projection(*args, backend=backend)

    names = ["y", "grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2", "grad_ln_w", "grad_ln_b"]
    return Case("ian_projection", s, ins, list(range(7)), names, call)


def _pool_case(s: dict[str, int], dev: torch.device) -> Case:
    from mage_fast.ops import patch_pool
    from mage_fast.ops.reference import patch_pool_ref

    B, G, C = s["B"], s["G"], s["C"]

    def call(x, backend=None):
        return patch_pool_ref(x, (G, G), 2) if backend is None else patch_pool(x, (G, G), 2, backend=backend)

    return Case("patch_pool", s, [torch.randn(B, G * G, C, device=dev)], [0], ["y", "grad_x"], call)


MAKERS = {"ce_mse": _ce_mse_case, "ian_projection": _ian_case, "patch_pool": _pool_case}


def run(case: Case, dtype: torch.dtype, backend: str | None) -> list[torch.Tensor]:
    """[output, grads of case.diff] of the objective in `dtype` (labels and masks kept as they are)."""
    ins = [t.to(torch.bfloat16).to(dtype) if t.is_floating_point() else t for t in case.inputs]
    for i in case.diff:
        ins[i].requires_grad_(True)
    out = case.call(*ins, backend=backend)
    g = torch.Generator(device=out.device).manual_seed(1)
    grad_out = torch.randn(out.shape, generator=g, device=out.device).to(out.dtype)
    grads = torch.autograd.grad(out, [ins[i] for i in case.diff], grad_out)
    return [out.detach(), *grads]


def compare(case: Case, backend: str) -> list[dict]:
    """One record per quantity of `case` on `backend` (bf16) against the float64 truth."""
    got = run(case, torch.bfloat16, backend)
    low = run(case, torch.bfloat16, None)
    truth = run(case, torch.float64, None)
    recs = []
    for name, a, lo, t in zip(case.names, got, low, truth):
        err = (a.double() - t).abs().max().item()
        ref_err = (lo.double() - t).abs().max().item()
        bound = FACTOR * ref_err + ATOL_REL * t.abs().max().item()
        ok = bool(torch.isfinite(a).all().item()) and err <= bound
        recs.append({"quantity": name, "err": err, "ref_err": ref_err, "bound": bound, "ok": ok})
    return recs


def check(op: str, backend: str, size: str, dev: torch.device) -> list[dict]:
    """Records of one op on `backend`, the last one {"passed": bool} (an exception fails it)."""
    from mage_fast.ops import device_class

    torch.manual_seed(0)
    case = MAKERS[op](SIZES[size][op], dev)
    base = {"op": op, "backend": backend, "device": device_class(dev), "size": size, "shape": case.shape}
    t0 = time.time()
    try:
        recs = [{**base, **r} for r in compare(case, backend)]
        passed, note = all(r["ok"] for r in recs), ""
    except Exception as e:  # noqa: BLE001  (a broken backend is a result: it stays out of validated.json)
        traceback.print_exc()
        recs, passed, note = [], False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return [*recs, {**base, "passed": passed, "seconds": round(time.time() - t0, 2), "note": note}]


@contextlib.contextmanager
def _small_chunks_on_cpu(size: str, dev: torch.device) -> Iterator[None]:
    """On CPU the smoke ce_mse case walks several chunks (the GPU sizes walk two by the planner);
    the planner's budget is restored afterwards."""
    mod = importlib.import_module("mage_fast.ops.ce_mse_plan")
    before = mod.CHUNK_BYTES
    if size == "smoke" and dev.type == "cpu":
        mod.CHUNK_BYTES = 2 * 16 * SIZES["smoke"]["ce_mse"]["V"] * 4
    try:
        yield
    finally:
        mod.CHUNK_BYTES = before


def environment(dev: torch.device, require_ext: bool) -> int:
    """Print the versions, the device and which anchors import; with `require_ext`, fail unless
    mage_fast._C is built with the device's kernels (CUDA: every op's CUDA kernel)."""
    import importlib.metadata as md

    for pkg in ("torch", "triton", "transformers", "liger-kernel", "cut-cross-entropy", "pytest", "numpy"):
        try:
            print(f"env: {pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"env: {pkg} not installed")
    for mod in ("liger_kernel", "cut_cross_entropy", "cutlass.cute"):
        try:
            importlib.import_module(mod)
            print(f"env: import {mod}: ok")
        except Exception as e:  # noqa: BLE001  (an anchor that does not import is only reported)
            print(f"env: import {mod}: {type(e).__name__}: {str(e)[:120]}")
    if dev.type == "cuda":
        print(f"env: device {torch.cuda.get_device_name(dev)}, torch CUDA {torch.version.cuda}")
    if not require_ext:
        return 0
    from mage_fast.ops import _ext

    ops = ("patch_pool_fwd", "ian_projection_fwd", "ce_mse_fwd")
    missing = [op for op in ops if not _ext.has_kernel(op, "CUDA" if dev.type == "cuda" else "CPU")]
    print(f"env: mage_fast._C {'loaded' if _ext.HAS_C else 'MISSING'}; kernels missing on {dev.type}: {missing}")
    return 0 if _ext.HAS_C and not missing else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", action="store_true", help="print versions and the device, then exit")
    p.add_argument("--require-ext", action="store_true", help="with --env: fail without the built kernels")
    p.add_argument("--backend", help="torch | cpp | triton | cuda")
    p.add_argument("--size", choices=sorted(SIZES), default="device")
    p.add_argument("--ops", default=",".join(MAKERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="JSON lines are appended here")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if args.env:
        return environment(dev, args.require_ext)
    if not (args.backend and args.out):
        p.error("--backend and --out are required (or --env)")
    failed = 0
    for op in args.ops.split(","):
        with _small_chunks_on_cpu(args.size, dev):
            recs = check(op, args.backend, args.size, dev)
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        for r in recs[:-1]:
            print(f"  {op:15} {args.backend:7} {r['quantity']:12} err {r['err']:.3e} <= {r['bound']:.3e}: {r['ok']}")
        last = recs[-1]
        failed += not last["passed"]
        print(f"validate: {op} {args.backend} on {last['device']}: {'passed' if last['passed'] else 'FAILED'} "
              f"({last['seconds']} s) {last['note']}", flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
