#!/usr/bin/env bash
# The wheels `make gpu-check` needs on the GPU image beyond ../shared/gpu/fetch_wheels.sh's: the
# image has no pytest (nor any package index), and the rehearsal on a CPU machine needs the
# anchors (liger-kernel, cut-cross-entropy) that fetch_wheels.sh also puts there. Pure-Python
# wheels for Python 3.12, into .whl/ (git-ignored, carried to the device with .gpu/). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl
want=(pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
  liger-kernel==0.8.5 cut-cross-entropy==25.1.1)  # packaging: the image has it (transformers)
missing=()
for w in "${want[@]}"; do
  name=${w%%==*}; ver=${w##*==}
  ls .whl/"${name//-/_}"-"$ver"-*.whl >/dev/null 2>&1 || missing+=("$w")
done
if [ ${#missing[@]} -gt 0 ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "${missing[@]}"
fi
echo "gpu-wheels: $(ls .whl/*.whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
