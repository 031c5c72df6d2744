#!/usr/bin/env bash
# `make gpu-check` on a CUDA machine (< 8 minutes on one H100/H200): build the CUDA extension,
# run the cuda and compiled-Triton op tests, compute-sanitizer memcheck on small cases, the GPU
# benchmark sweep (Liger-Kernel's FLCE and Apple's cut-cross-entropy beside ours where
# importable) into benchmarks/results/results.csv, a plain summary and the validated winners
# (mage_fast/ops/validated.json, which `backend="auto"` reads on CUDA). DRY=1 prints every step.
# On the lent GPU machine: .gpu/prelude.sh (/work/shared/gpu/README.md) installs the wheels and
# builds the extension; elsewhere the build is `pip install --no-build-isolation -e .`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VPY:-python}
DRY=${DRY:-0}
export BENCH_DATE=${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
LOG=runs/gpu-check
start=$(date +%s)

step() {  # step NAME COMMAND...: print, then run (unless DRY=1), with its time
  echo "gpu-check: [$1] ${*:2}"
  [ "$DRY" = 1 ] && return 0
  local t0=$(date +%s)
  bash -o pipefail -c "${*:2}"
  echo "gpu-check: [$1] done in $(( $(date +%s) - t0 )) s"
}

if [ "$DRY" != 1 ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check needs a CUDA device (DRY=1 lists the steps)')"
  mkdir -p "$LOG"
fi
if [ -f .gpu/prelude.sh ]; then
  build="source .gpu/prelude.sh"
else
  build="MAGE_FAST_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=\${TORCH_CUDA_ARCH_LIST:-9.0+PTX} $PY -m pip install -q --no-build-isolation --no-deps -e ."
fi
step build "$build && $PY -c 'from mage_fast.ops import _ext; import torch; assert _ext.has_kernel(\"patch_pool_fwd\", \"CUDA\"), \"no CUDA kernels\"'"
step tests "env -u TRITON_INTERPRET $PY -m pytest -q -x tests/ops tests/benchmarks/test_op_models.py -k 'cuda or triton or expected' 2>&1 | tee $LOG/tests.log | tail -5"
step memcheck "compute-sanitizer --tool memcheck --error-exitcode 1 $PY .ci/gpu_sanitize_cases.py 2>&1 | tee $LOG/memcheck.log | tail -5"
for op in patch_pool ian_projection ce_mse; do
  step "bench $op" "$PY -m benchmarks.bench_$op --isolate op --budget 0.3 2>&1 | tee $LOG/bench_$op.log | tail -25"
done
step winners "$PY -m benchmarks.gpu_winners --summary $LOG/summary.txt"
echo "gpu-check: $([ "$DRY" = 1 ] && echo 'dry run, nothing executed' || echo "passed in $(( $(date +%s) - start )) s; commit benchmarks/results/results.csv and mage_fast/ops/validated.json")"
