#!/usr/bin/env bash
# `make gpu-check`: the one device command that builds, checks, times and brings its results back.
#
# On the GPU image (python3, torch 2.11, triton 3.6, no package index; ../shared/gpu/README.md),
# with .whl/ carried (../shared/gpu/fetch_wheels.sh, then .ci/gpu_wheels.sh, on the dev machine):
#     bash .ci/gpu_check.sh          # or `make gpu-check`; results in $OUT
# Each step is its own process under a timeout (its device budget); a failing step is recorded
# and the next one runs (a CUDA context that a step poisons ends with that step's process):
#   wheels    .whl/*.whl into a target folder, put on PYTHONPATH here: every later step sees them
#             (on the device every wheel; the rehearsal leaves out those not for its Python)
#   build     pip install -e . with the CUDA kernels (sm_90)
#   env       versions, the device, which anchors import
#   validate  each op on each backend vs a float64 reference at production shapes, a process per
#             backend (benchmarks/gpu_validate.py)
#   sweep     ce_mse and its peers at N=16384, H=4096, V in {32000, 128256}, ian_projection and
#             patch_pool at the model's shapes: fwd+bwd time and peak extra memory, with the bf16
#             matmul and copy peaks measured in the same run (`--sweep check`)
#   profile   torch.profiler traces of ce_mse's providers
#   tests     the op tests on CUDA and compiled Triton, the production-shape ones first (the sm_90
#             compile report is for machines without a GPU)
#   memcheck  compute-sanitizer memcheck with the caching allocator off
#   qlora     in the time the steps above left unused (at least 90 s, else skipped): the QLoRA
#             tests on CUDA (bitsandbytes' CUDA kernels; tests/train/test_train_qlora_cuda.py and
#             test_train_qlora_units.py), then benchmarks/bench_lora.py's rows in bf16 (full, LoRA,
#             LoRA under ZeRO-2, QLoRA; the wide LLM, then the demo size) into the CSV
#   report    validated.json (only backends that passed `validate`), summary, this run's CSV rows
# $OUT (default runs/gpu-check/out, relative paths from the repository root) gets 4 files:
# results.csv, validated.json, summary.txt, logs.tar.gz (logs, checks, profiler traces).
# Copy validated.json to mage_fast/ops/ and append results.csv's rows to benchmarks/results/.
#
# REHEARSE=1 (a CPU machine, e.g. CI): the same steps with the GPU image's triton 3.6.0 and
# transformers 5.17.0 (.venv-gpu-rehearse, .ci/gpu_rehearse_env.sh): the wheels into a target
# folder, the build (C++ only), the checks at smoke sizes on torch, cpp and Triton under
# TRITON_INTERPRET=1, the sweep and profile at smoke size, the op tests, the sanitizer's cases
# without the sanitizer, the QLoRA tests where deepspeed imports (the CUDA ones skip) without
# bench_lora's GPU rows, the report and $OUT's layout; it prints each step's device budget and
# their total, fails when that exceeds 540 s or any step fails. DRY=1 prints the steps only.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REHEARSE=${REHEARSE:-0}
DRY=${DRY:-0}
OUT=${OUT:-runs/gpu-check/out}
WORK=${GPU_CHECK_WORK:-runs/gpu-check/work}
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac
case $WORK in /*) ;; *) WORK=$ROOT/$WORK ;; esac
SITE=$WORK/site
CSV=$WORK/results.csv
DEVICE_LIMIT_S=540  # one device command runs at most 10 minutes; 1 left for start and transfer
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export BENCH_DATE=${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
if [ "$REHEARSE" = 1 ]; then
  RV=${REHEARSE_VENV:-.venv-gpu-rehearse}
  case $RV in /*) ;; *) RV=$ROOT/$RV ;; esac
  PY=${GPU_PY:-$RV/bin/python}
  export TRITON_INTERPRET=1 MAGE_FAST_BUILD_CUDA=0
  DEV=cpu SIZE=smoke SWEEP=smoke BACKENDS="torch:300 cpp:300 triton:300" PROFILED=op_torch,cpp
  BENCH_FLAGS="--threads 1 --budget 0.05 --compile-backend aot_eager"
  CE_T=400 OP_T=200  # per-process caps inside the sweep step
  CE_PROVIDERS=""
  SANITIZE="" NVSMI=""
  QLORA_T=600 QLORA_NO_DS=true  # the QLoRA tests' cap inside the qlora step; no deepspeed: not a failure
  WHEELS_ALL=""  # .whl's cp312 builds are left out on another Python (gpu_rehearse_env.sh has them)
  QLORA_BENCH="echo 'qlora: bench_lora --device cuda (the GPU rows) runs on a GPU only, not in the rehearsal'"
else
  PY=${GPU_PY:-python3}
  unset TRITON_INTERPRET
  export MAGE_FAST_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  # backend:timeout of its validate process (Triton's JIT compiles the production shapes' kernels)
  DEV=cuda SIZE=device SWEEP=check BACKENDS="torch:15 triton:35 cuda:15" PROFILED=op_torch,triton,cuda,liger
  BENCH_FLAGS="--budget 0.3"
  CE_T=110 OP_T=22  # per-process timeouts inside the sweep (ce_mse, then 2 ops)
  CE_PROVIDERS="--providers triton,cuda,liger,liger_cute,cce,op_torch,torch,torch_lce,compile"  # compile last: slowest
  SANITIZE="PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1"
  NVSMI="nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader;"
  WHEELS_ALL="--all"
  QLORA_T=150 QLORA_NO_DS=false
  QLORA_BENCH="$PY -m benchmarks.bench_lora --device cuda --sizes wide,demo --set train.bf16=true --csv '$CSV'"
fi
source .ci/gpu_steps.sh

if [ "$DRY" != 1 ]; then
  rm -rf "$WORK" runs/profile
  mkdir -p "$WORK/logs" "$OUT"
  rm -f "$OUT"/{results.csv,validated.json,summary.txt,logs.tar.gz}
fi
start=$SECONDS
echo "gpu-check: $([ "$REHEARSE" = 1 ] && echo "REHEARSAL on CPU" || echo "device run"), python $PY, out $OUT"

step wheels 15 300 "rm -rf '$SITE' && w=\$($PY .ci/gpu_wheels_for.py .whl $WHEELS_ALL) && $PY -m pip install -q --no-index --no-deps --no-compile --target '$SITE' \$w"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
step build 140 1500 "$PY -m pip install -q --no-index --no-deps --no-build-isolation -e . && $PY -m benchmarks.gpu_validate --env --require-ext --device $DEV"
step env 10 300 "$NVSMI $PY -m benchmarks.gpu_validate --env --device $DEV"
step validate 65 900 "rc=0; for bt in $BACKENDS; do timeout -k 5 \${bt#*:} $PY -m benchmarks.gpu_validate --backend \${bt%:*} --size $SIZE --device $DEV --out '$WORK/checks.jsonl' || rc=1; done; exit \$rc"
bench="--sweep $SWEEP --modes full --csv '$CSV' $BENCH_FLAGS"
step sweep 160 900 "rc=0; timeout -k 5 $CE_T $PY -m benchmarks.bench_ce_mse $bench $CE_PROVIDERS --isolate provider || rc=1; for op in ian_projection patch_pool; do timeout -k 5 $OP_T $PY -m benchmarks.bench_\$op $bench --isolate op || rc=1; done; exit \$rc"
step profile 15 900 "$PY -m benchmarks.bench_ce_mse --profile --sweep $SWEEP --modes full --providers $PROFILED $BENCH_FLAGS"
pytest="$PY -m pytest -q -o addopts=-ra -p no:cacheprovider --confcutdir tests/ops"
step tests 80 900 "rc=0; $pytest --junitxml '$WORK/logs/tests_production.xml' tests/ops/test_production_shapes.py || rc=1; $pytest --junitxml '$WORK/logs/tests.xml' --ignore tests/ops/test_production_shapes.py tests/ops tests/benchmarks/test_op_models.py -k '(cuda or triton or expected) and not sm90' || rc=1; exit \$rc"
step memcheck 35 900 "$SANITIZE $PY .ci/gpu_sanitize_cases.py --device $DEV"
# QLoRA: the tests first (at most QLORA_T s), then the bench rows in what is left (each size's rows
# reach the CSV when it is done). The tests need deepspeed (tests/train's conftest imports the
# engine): on the device .whl must have it; CI's rehearsal has none (no fetch_wheels.sh) and says so.
qlora_tests="if $PY -c 'import deepspeed' >/dev/null 2>&1; then \
timeout -k 5 \$((STEP_LIMIT - 30 < $QLORA_T ? STEP_LIMIT - 30 : $QLORA_T)) $PY -m pytest -q -o addopts=-ra \
-p no:cacheprovider --junitxml '$WORK/logs/tests_qlora.xml' tests/train/test_train_qlora_cuda.py \
tests/train/test_train_qlora_units.py; else echo 'qlora: deepspeed does not import here (.whl without \
fetch_wheels.sh wheels): the QLoRA tests not run'; $QLORA_NO_DS; fi"
qlora_bench="left=\$((STEP_LIMIT - SECONDS - 5)); if [ \$left -ge 20 ]; then timeout -k 5 \$left $QLORA_BENCH; \
else echo \"qlora: \$left s left, no bench_lora rows\"; false; fi"
step_left qlora 90 10 900 "rc=0; $qlora_tests || rc=1; $qlora_bench || rc=1; exit \$rc"
step report 10 300 "$PY -m benchmarks.gpu_winners --csv '$CSV' --checks '$WORK/checks.jsonl' --steps '$WORK/steps.tsv' --out '$OUT' --device $DEV"
finish
