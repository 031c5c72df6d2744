#!/usr/bin/env bash
# The wheels `make gpu-check` needs on the GPU image beyond ../shared/gpu/fetch_wheels.sh's: the
# image has no pytest (nor any package index), and the rehearsal on a CPU machine needs the
# anchors (liger-kernel, cut-cross-entropy) that fetch_wheels.sh also puts there. Wheels for
# Python 3.12, into .whl/ (git-ignored, carried to the device with .gpu/). Idempotent.
#
# bitsandbytes (QLoRA's 4-bit layers, the qlora step) ships one 43 MB wheel with a library per
# CUDA and ROCm release; .whl/ gets it stripped to the two the image loads (3.6 MB):
# libbitsandbytes_cuda130.so (torch 2.11+cu130: bitsandbytes picks the library by
# torch.version.cuda) and libbitsandbytes_cpu.so (the rehearsal). `wheel unpack` / `wheel pack`
# (the venv's `wheel`) rewrite its RECORD, so pip installs it as any wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WPY=${WPY:-.venv/bin/python}  # has `wheel` (requirements.txt)
BNB=bitsandbytes==0.50.2
BNB_KEEP=(libbitsandbytes_cuda130.so libbitsandbytes_cpu.so)
mkdir -p .whl
want=(pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
  liger-kernel==0.8.5 cut-cross-entropy==25.1.1)  # packaging: the image has it (transformers)
# What the training stack imports beyond the image's packages (the qlora step trains): mage_fast.data
# (jsonschema through the tool-call format, pillow for images) and deepspeed's own imports (einops,
# msgpack, py-cpuinfo). pillow, rpds-py and msgpack are cp312 builds: the rehearsal on another
# Python skips them (gpu_check.sh's wheels step) and has its own (gpu_rehearse_env.sh).
want+=(jsonschema==4.26.0 attrs==26.1.0 referencing==0.37.0 jsonschema-specifications==2025.9.1
  rpds-py==2026.9.1 pillow==13.0.0 einops==0.8.2 msgpack==1.2.4 py-cpuinfo==9.0.0)
download() {  # download DEST SPEC...: binary wheels for CPython 3.12 on x86_64 Linux
  local dest=$1
  shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$dest" "$@"
}
missing=()
for w in "${want[@]}"; do
  name=${w%%==*}; ver=${w##*==}
  ls .whl/"${name//-/_}"-"$ver"-*.whl >/dev/null 2>&1 || missing+=("$w")
done
[ ${#missing[@]} -eq 0 ] || download .whl "${missing[@]}"

# strip_bnb: the bitsandbytes wheel with only BNB_KEEP's libraries, into .whl/ (same file name).
strip_bnb() {
  local tmp
  tmp=$(mktemp -d)
  download "$tmp" "$BNB"
  "$WPY" -m wheel unpack -d "$tmp/un" "$tmp"/bitsandbytes-*.whl >/dev/null
  local pkg=("$tmp"/un/bitsandbytes-*/bitsandbytes)
  for keep in "${BNB_KEEP[@]}"; do
    test -f "$pkg/$keep" || { echo "gpu-wheels: $BNB holds no $keep" >&2; exit 1; }
  done
  find "$pkg" -maxdepth 1 -name 'libbitsandbytes_*.so' $(printf -- "-not -name %s " "${BNB_KEEP[@]}") -delete
  "$WPY" -m wheel pack -d .whl "$tmp"/un/bitsandbytes-* >/dev/null
  echo "gpu-wheels: $BNB stripped to ${BNB_KEEP[*]}: $(du -h "$tmp"/bitsandbytes-*.whl | cut -f1) -> $(du -h .whl/bitsandbytes-*.whl | cut -f1)"
  rm -rf "$tmp"
}
ls .whl/bitsandbytes-"${BNB##*==}"-*.whl >/dev/null 2>&1 || strip_bnb
echo "gpu-wheels: $(ls .whl/*.whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
