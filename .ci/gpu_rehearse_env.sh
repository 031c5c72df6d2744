#!/usr/bin/env bash
# The rehearsal venv of `make gpu-check REHEARSE=1` ($REHEARSE_VENV, git-ignored): the project's
# torch (2.13, CPU wheel) with the GPU image's triton 3.6.0 and transformers 5.17.0, its peft and
# accelerate (the project's pins), and what the op tests and the smoke sweep import; nothing more,
# as on the image: no deepspeed, no pytest, no jsonschema (those come from .whl, installed by
# gpu-check's own wheels step). .whl's cp312 builds (pillow, rpds-py, msgpack, pydantic-core) are
# installed here instead, for this Python, at the same versions: the wheels step leaves out the
# wheels that are not for the rehearsal's Python (.ci/gpu_wheels_for.py).
# numpy 2.3.5, not the project's 2.4.6: triton 3.6's interpreter calls int() on 1-element arrays,
# which numpy 2.4 refuses (TypeError in every interpreted kernel loop); the GPU never interprets.
# The image's torch 2.11 is served only as a ~3 GB CUDA build: see benchmarks/NOTES.md.
# Re-run only when this file changed since the venv was built (a stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
RV=${REHEARSE_VENV:-.venv-gpu-rehearse}
PY=${PY:-python3}
stamp="$RV/.rehearse-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt .ci/gpu_rehearse_env.sh ]; then
  exit 0
fi
start=$(date +%s)
test -x "$RV/bin/python" || "$PY" -m venv "$RV"
"$RV/bin/python" -m pip install -q --upgrade pip
"$RV/bin/python" -c "import torch" 2>/dev/null || "$RV/bin/python" -m pip install -q torch==2.13.0
"$RV/bin/python" -m pip install -q triton==3.6.0 transformers==5.17.0 numpy==2.3.5 ninja==1.13.2 \
  pybind11==3.1.0 "setuptools>=70" wheel PyYAML==6.0.3 peft==0.21.2 accelerate==1.15.0 \
  pillow==13.0.0 rpds-py==2026.9.1 msgpack==1.2.4 pydantic-core==2.50.4
"$RV/bin/python" - <<'PY'
import torch, triton, transformers
assert triton.__version__ == "3.6.0", triton.__version__
assert transformers.__version__ == "5.17.0", transformers.__version__
print(f"gpu-rehearse venv: torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}")
PY
touch "$stamp"
echo "gpu-rehearse venv: built in $(( $(date +%s) - start )) s"
