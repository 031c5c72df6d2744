#!/usr/bin/env bash
# CUDA half of `make sm90-report`: compile csrc/cuda/*.cu for sm_90 with nvcc -Xptxas -v and the
# exact flags of the CUDA build (read from the `make cuda-check` build's build.ninja, run first
# where absent), then print registers, spills and shared memory per kernel
# (tests/ops/sm90_compile.py --ptxas-log); fails on a spill or shared memory above 227 KiB.
# Skips, with a message and exit 0, where nvcc is absent (as cuda-check does).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=${PY:-python3}
VPY=${VPY:-.venv/bin/python}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "sm90-report: CUDA kernels SKIPPED: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
  exit 0
fi
start=$(date +%s)
ninja_file=$(find build/cuda-check -name build.ninja 2>/dev/null | head -1 || true)
if [ -z "$ninja_file" ]; then
  PY=$PY bash .ci/cuda_check.sh
  ninja_file=$(find build/cuda-check -name build.ninja | head -1)
fi
src=$(pwd)/build/cuda-check/src
flags=$(sed -n 's/^cuda_cflags = //p' "$ninja_file" | sed "s#$src/#$(pwd)/#g; s# -c\$##")
post=$(sed -n 's/^cuda_post_cflags = //p' "$ninja_file" | sed 's/-gencode=[^ ]*//g; s/--compiler-options [^ ]*//')
out=build/sm90-report
mkdir -p "$out"
ls csrc/cuda/*.cu | xargs -P 2 -I{} bash -c \
  "\"$CUDA_HOME/bin/nvcc\" $flags -c {} -o $out/\$(basename {}).o $post -gencode=arch=compute_90,code=sm_90 -Xptxas -v > $out/\$(basename {}).log 2>&1 || { cat $out/\$(basename {}).log; exit 1; }"
cat "$out"/*.cu.log > "$out/ptxas.log"
"$VPY" tests/ops/sm90_compile.py --ptxas-log "$out/ptxas.log"
echo "sm90-report: CUDA kernels compiled in $(( $(date +%s) - start )) s"
