#!/usr/bin/env bash
# `make cuda-check`: prove without a GPU that `pip install` with a CUDA build of torch compiles,
# links and loads mage_fast._C with every op's CUDA kernel registered (DESIGN.md §4).
#   1. a second venv ($CUDA_VENV, git-ignored) with the CUDA torch ($CUDA_TORCH, from local disk);
#   2. a copy of the sources in build/cuda-check/src (so the in-place CPU build of .venv is never
#      touched), `pip install --no-build-isolation --no-deps` of it with nvcc ($CUDA_HOME);
#   3. import mage_fast._C there and assert a CUDA (and CPU) kernel for each low-level op.
# Skips, with a message and exit 0, where nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CUDA_VENV=${CUDA_VENV:-.venv-cuda}
CUDA_TORCH=${CUDA_TORCH:-torch==2.14.1}
PY=${PY:-python3}
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda-check: SKIPPED: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME); the CUDA build was NOT checked."
  exit 0
fi
start=$(date +%s)
echo "cuda-check: nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), venv $CUDA_VENV, $CUDA_TORCH, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
test -x "$CUDA_VENV/bin/python" || "$PY" -m venv "$CUDA_VENV"
VPY="$CUDA_VENV/bin/python"
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q "$CUDA_TORCH" ninja setuptools wheel numpy
fi
echo "cuda-check: torch ready after $(( $(date +%s) - start )) s"

SRC=build/cuda-check/src
mkdir -p "$SRC"
# A fresh copy of the sources; -p keeps their times, so a rerun in the same checkout recompiles
# only what changed (ninja, in $SRC/build). A fresh clone has no build/: everything is compiled.
rm -rf "$SRC"/csrc "$SRC"/mage_fast "$SRC"/kernels
cp -rp setup.py pyproject.toml csrc mage_fast kernels "$SRC"/
find "$SRC" -name '*.so' -delete
# The build logs go to a file; only their tail on failure.
LOG=build/cuda-check/build.log
if ! MAGE_FAST_BUILD_CUDA=1 "$VPY" -m pip install -v --no-build-isolation --no-deps "./$SRC" >"$LOG" 2>&1; then
  tail -n 60 "$LOG"
  echo "cuda-check: FAILED: the CUDA build of mage_fast._C did not compile or link (full log: $LOG)"
  exit 1
fi
grep -E "^\s*mage-fast:" "$LOG" || true
echo "cuda-check: built after $(( $(date +%s) - start )) s"

cd build/cuda-check  # import the installed package, not ./mage_fast
"../../$VPY" - <<'PYEOF'
import torch

from mage_fast import _C  # noqa: F401  (loads the .so: undefined symbols fail here)

print(f"cuda-check: torch {torch.__version__} (CUDA {torch.version.cuda}), mage_fast._C at {_C.__file__}")
ops = ["patch_pool_fwd", "patch_pool_bwd", "ian_projection_fwd", "ian_projection_bwd", "ce_mse_fwd"]
missing = [
    f"{op}:{key}"
    for op in ops
    for key in ("CUDA", "CPU")
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"mage_fast::{op}", key)
]
assert not missing, f"cuda-check: kernels missing: {missing}"
from mage_fast.ops import _backend  # the Python layer: backend 'cuda' is usable on CUDA devices

for op in ("patch_pool", "ian_projection", "ce_mse"):
    why = _backend.unavailable_reason(op, "cuda", torch.device("cuda"))
    assert why is None, f"cuda-check: backend 'cuda' of {op} unavailable: {why}"
print(f"cuda-check: OK: CUDA and CPU kernels registered for {', '.join(ops)}; backend 'cuda' of every op")
PYEOF
echo "cuda-check: passed in $(( $(date +%s) - start )) s"
