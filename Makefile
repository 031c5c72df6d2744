# Fresh machine: `make demo` (train the small MAGE on the shapes world) or `make test`.
# Each target installs what it needs into .venv (created if absent).
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.mage-fast-installed
SOURCES := setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/include/mage_fast/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
NPROC   ?= 2
DEMO    ?= runs/demo

.PHONY: install demo test lint clean cuda-check bench bench-smoke

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-build-isolation -e .
	touch $(STAMP)

# The built-in task: generate the shapes world, stage 1 (align on captions, CE + MSE), stage 2
# (questions), then held-out exact-match accuracy per question type. Two ranks on CPU via gloo.
demo: install
	$(VENV)/bin/python -m mage_fast.data.shapes --out $(DEMO)/data --n 6000 --seed 0
	PATH=$(abspath $(VENV))/bin:$$PATH deepspeed --num_gpus $(NPROC) --module mage_fast.train \
	  --config configs/train/demo_stage1.yaml run_dir=$(DEMO)/stage1 data.root=$(DEMO)/data
	PATH=$(abspath $(VENV))/bin:$$PATH deepspeed --num_gpus $(NPROC) --module mage_fast.train \
	  --config configs/train/demo_stage2.yaml run_dir=$(DEMO)/stage2 data.root=$(DEMO)/data \
	  init_from=$(DEMO)/stage1/export
	$(VENV)/bin/python -m mage_fast.eval --model $(DEMO)/stage2/export --data $(DEMO)/data/eval.json \
	  --out $(DEMO)/answers.jsonl

test: install
	$(VENV)/bin/python -m pytest -q tests

# Benchmarks (benchmarks/README.md): the device's full sweep (CPU: smaller shapes, ~10 min on 2
# cores; GPU: the real-model shapes), one training step kernels on/off, plots, then the guard
# against benchmarks/baselines.json (non-zero exit when a speed ratio falls below its floor).
# BENCH_DATE keys every row of one run.
bench: install
	export BENCH_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) && \
	$(VPY) -m benchmarks.bench_patch_pool && \
	$(VPY) -m benchmarks.bench_ian_projection && \
	$(VPY) -m benchmarks.bench_ce_mse && \
	$(VPY) -m benchmarks.bench_step
	$(VPY) -m benchmarks.plot
	$(VPY) -m benchmarks.guard

# Every benchmark script on tiny shapes (seconds; CI), into runs/bench-smoke/. No guard.
bench-smoke: install
	$(VPY) -m benchmarks.smoke

# Without a GPU: build mage_fast._C with nvcc against the CUDA torch (torch==2.14.1 from local disk)
# in a second venv (.venv-cuda), import it, and assert every op has its CUDA kernel registered.
# Skips with a message where nvcc is absent. Details: .ci/cuda_check.sh.
cuda-check:
	PY=$(PY) bash .ci/cuda_check.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf build *.egg-info mage_fast/_C*.so runs .venv-cuda
