# Fresh machine: `make demo` (train the small MAGE on the shapes world) or `make test`.
# Each target installs what it needs into .venv (created if absent).
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.mage-fast-installed
# The venv's tools first on PATH (deepspeed, ninja): torch builds JIT ops with whichever `ninja` it
# finds, and a build by another ninja version counts as stale, so mixing them rebuilds every time.
# Every command that runs a program of the venv starts with it (tests/test_makefile.py checks).
VENV_PATH := PATH=$(abspath $(VENV))/bin:$$PATH
SOURCES := setup.py pyproject.toml requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/include/mage_fast/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
NPROC   ?= 2
# The launcher's rendezvous port (deepspeed's default): another value lets a second run share the machine.
PORT    ?= 29500
TEST_WORKERS ?= 2
DEMO    ?= runs/demo
SEED    ?= 0
CONTRAST ?= 1500
WHERES  ?= 1
DEMO_ARGS ?=

.PHONY: install demo demo-seeds demo-lora demo-tools demo-multi ablate test test-cap lint clean cuda-check bench bench-smoke sm90-report gpu-check

install: $(STAMP)

# The last step runs two independent compiles side by side (the extension, DeepSpeed's all-reduce
# op), so their serial parts (linking, pip's own work) overlap; prebuild exits 0 even when it fails.
$(STAMP): $(SOURCES)
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VENV_PATH) $(VPY) -m pip install -q --upgrade pip
	$(VENV_PATH) $(VPY) -c "import torch" 2>/dev/null || $(VENV_PATH) $(VPY) -m pip install -q torch==2.13.0
	$(VENV_PATH) $(VPY) -m pip install -q -r requirements.txt
	$(VENV_PATH) $(VPY) -m mage_fast.train.prebuild --ops ShareMemCommBuilder & pre=$$!; \
	  $(VENV_PATH) $(VPY) -m pip install -q --no-build-isolation -e . || { wait $$pre; exit 1; }; wait $$pre
	touch $(STAMP)

# The built-in task: generate the shapes world, stage 1 (align on captions, CE + MSE), stage 2
# (questions), then held-out exact-match accuracy per question type. Two ranks on CPU via gloo.
# SEED seeds the world (images, questions, held-out rows) and both stages' init and data order.
# CONTRAST: the world's extra training images whose objects share one colour or one shape (0: none;
# docs/demo.md, "Contrast images in the demo"). WHERES=1: stage 2 also asks "where is X ?" of every
# object that shares its colour with another object of its image (0: not; docs/demo.md, "Four LLM
# layers, micro-batch 32 and the shared-colour where rows").
# DEMO_ARGS: config overrides for both stages, e.g. DEMO_ARGS=data.packing=true.
demo: install
	$(VENV_PATH) $(VPY) -m mage_fast.shapes.scenes --out $(DEMO)/data --n 6000 --seed $(SEED) --contrast $(CONTRAST)$(if $(filter 1,$(WHERES)), --wheres)
	$(VENV_PATH) deepspeed --num_gpus $(NPROC) --master_port $(PORT) --module mage_fast.train \
	  --config configs/train/demo_stage1.yaml run_dir=$(DEMO)/stage1 data.root=$(DEMO)/data seed=$(SEED) $(DEMO_ARGS)
	$(VENV_PATH) deepspeed --num_gpus $(NPROC) --master_port $(PORT) --module mage_fast.train \
	  --config configs/train/demo_stage2.yaml run_dir=$(DEMO)/stage2 data.root=$(DEMO)/data seed=$(SEED) \
	  init_from=$(DEMO)/stage1/export $(DEMO_ARGS)
	$(VENV_PATH) $(VPY) -m mage_fast.apps.eval --model $(DEMO)/stage2/export --data $(DEMO)/data/eval.json \
	  --out $(DEMO)/answers.jsonl

# The demo once per seed in SEEDS (one after another, DEMO_SEEDS/seed<N>), then the accuracy per
# question type of every run with the mean and the minimum over the seeds; exit 1 when a type
# of a run is below DEMO_BAR. Seeds stand in for other machines' float noise.
SEEDS      ?= 0 1 2
DEMO_SEEDS ?= runs/demo-seeds
DEMO_BAR   ?= 0.95
demo-seeds: install
	for s in $(SEEDS); do $(MAKE) --no-print-directory demo SEED=$$s DEMO=$(DEMO_SEEDS)/seed$$s || exit 1; done
	$(VENV_PATH) $(VPY) -m mage_fast.apps.demo_seeds --bar $(DEMO_BAR) $(foreach s,$(SEEDS),$(DEMO_SEEDS)/seed$(s))

# What the tests need beyond the demo's install (requirements-test.txt: bitsandbytes for QLoRA).
TEST_STAMP := $(VENV)/.mage-fast-test-installed
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(VENV_PATH) $(VPY) -m pip install -q -r requirements-test.txt
	touch $(TEST_STAMP)

# Test files run in TEST_WORKERS processes (pytest-xdist), a file's tests in one of them, so a
# module's shared launch runs once; most of the time goes to real 2-rank launches.
test: install $(TEST_STAMP)
	$(VENV_PATH) $(VPY) -m mage_fast.train.prebuild
	$(VENV_PATH) $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The unit and op tests (all but the `slow` real launches) under another ATen CPU kernel set than
# the machine's own (CAP = default | avx2 | avx512): float results differ between kernel sets, so a
# test that holds on one CPU only fails here. CI runs it with CAP=default.
CAP ?= default
test-cap: install $(TEST_STAMP)
	ATEN_CPU_CAPABILITY=$(CAP) $(VENV_PATH) $(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

# Benchmarks (benchmarks/README.md, with their times): the device's full sweep (CPU: smaller
# shapes; GPU: the real-model shapes), one training step kernels on/off, plots, then the guard
# against benchmarks/baselines.json (non-zero exit when a speed ratio falls below its floor).
# BENCH_DATE keys every row of one run.
bench: install
	export BENCH_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) && \
	$(VENV_PATH) $(VPY) -m benchmarks.bench_patch_pool && \
	$(VENV_PATH) $(VPY) -m benchmarks.bench_ian_projection && \
	$(VENV_PATH) $(VPY) -m benchmarks.bench_ce_mse && \
	$(VENV_PATH) $(VPY) -m benchmarks.bench_step && \
	$(VENV_PATH) $(VPY) -m benchmarks.bench_packing
	$(VENV_PATH) $(VPY) -m benchmarks.plot
	$(VENV_PATH) $(VPY) -m benchmarks.guard

# Every benchmark script on tiny shapes (seconds; CI), into runs/bench-smoke/. No guard.
bench-smoke: install
	$(VENV_PATH) $(VPY) -m benchmarks.smoke

# Without a GPU: build mage_fast._C with nvcc against the CUDA torch (torch==2.14.1 from local disk)
# in a second venv (.venv-cuda), import it, and assert every op has its CUDA kernel registered.
# Skips with a message where nvcc is absent. Details: .ci/cuda_check.sh.
cuda-check:
	PY=$(PY) bash .ci/cuda_check.sh

lint: install
	$(VENV_PATH) $(VENV)/bin/ruff check .
	$(VENV_PATH) $(VENV)/bin/ruff format --check .

clean:
	rm -rf build *.egg-info mage_fast/_C*.so runs .venv-cuda

# Stage 2 with LoRA (docs/lora.md) on top of the demo's stage 1 (`make demo` first when its export
# is absent): the LLM frozen, rank-16 adapters on its block linears, the aligner trained fully at its
# own learning rate; held-out accuracy per question type as for `make demo`.
demo-lora: install
	test -f $(DEMO)/stage1/export/mage_config.json || $(MAKE) demo
	$(VENV_PATH) deepspeed --num_gpus $(NPROC) --master_port $(PORT) --module mage_fast.train \
	  --config configs/train/demo_stage2_lora.yaml run_dir=$(DEMO)/stage2_lora data.root=$(DEMO)/data \
	  init_from=$(DEMO)/stage1/export
	$(VENV_PATH) $(VPY) -m mage_fast.apps.eval --model $(DEMO)/stage2_lora/export --data $(DEMO)/data/eval.json \
	  --out $(DEMO)/answers_lora.jsonl

# Stage 3: multimodal tool calling on top of the base demo (run first when its export is absent):
# tool rows executed by the real render_scene / edit_scene, train from stage 2's export, then the
# executor's scores on the held-out rows (valid-call, tool name, arguments, over-call, end-to-end).
demo-tools: install
	test -f $(DEMO)/stage2/export/mage_config.json || $(MAKE) demo
	$(VENV_PATH) $(VPY) -m mage_fast.shapes.tool_tasks --out $(DEMO)/tools --n 6300 --n-eval 300 --seed 1
	$(VENV_PATH) deepspeed --num_gpus $(NPROC) --master_port $(PORT) --module mage_fast.train \
	  --config configs/train/demo_tools.yaml run_dir=$(DEMO)/stage3 data.root=$(DEMO)/tools \
	  init_from=$(DEMO)/stage2/export
	$(VENV_PATH) $(VPY) -m mage_fast.apps.tools.score --model $(DEMO)/stage3/export --data $(DEMO)/tools/eval.json \
	  --config configs/train/demo_tools.yaml --out $(DEMO)/tools_scores.json

# Multi-image demo (docs/sam.md): the shapes world's group / change /
# story tasks (crowded scenes, one visual token per image), `ian`, `sam` and `sam` exclude-self
# trained with the same config, seed and budget per seed (one process per run, two at a time);
# mean ± std over seeds, the paired bootstrap interval of sam − ian, the bars and the guidance
# maps in $(DEMO_MULTI)/{results.md,results.json,results.png,guidance_*.png}. Finished runs are
# reused, so an interrupted run continues. MULTI_ARGS: overrides for every run, e.g. max_steps=100.
DEMO_MULTI ?= runs/demo_multi
MULTI_SEEDS ?= 0 1 2
MULTI_ARGS ?=
demo-multi: install
	$(VENV_PATH) $(VPY) -m mage_fast.shapes.multi --out $(DEMO_MULTI)/data --n 2000 --n-eval 50 --seed 0
	$(VENV_PATH) $(VPY) -m mage_fast.apps.demo_multi --data $(DEMO_MULTI)/data --out $(DEMO_MULTI) \
	  --config configs/train/demo_multi.yaml $(MULTI_ARGS) --seeds $(MULTI_SEEDS)

# The projector ablation (mage_fast/apps/ablate.py): 4 aligners and 3 MSE weights on the shapes world,
# 3 seeds, one process per run; runs/ablate/{table.md,results.json,ablate.png}. Finished runs are
# reused, so an interrupted `make ablate` continues. ABLATE_ARGS e.g. "--steps 50 --seeds 0".
ABLATE_ARGS ?=
ablate: install
	$(VENV_PATH) $(VPY) -m mage_fast.apps.ablate --out runs/ablate $(ABLATE_ARGS)

# Without a GPU: every Triton kernel and launch configuration the ops can pick compiled for sm_90
# with the GPU JIT's specialisations, and csrc/cuda with nvcc -Xptxas -v; prints registers,
# spills and shared memory per kernel, fails on a spill or > 227 KiB (tests/ops/sm90_compile.py).
sm90-report: install
	@start=$$(date +%s); env -u TRITON_INTERPRET $(VENV_PATH) $(VPY) tests/ops/sm90_compile.py && \
	  PY=$(PY) VPY=$(VPY) bash .ci/sm90_cuda.sh && echo "sm90-report: done in $$(( $$(date +%s) - start )) s"

# The one GPU command (< 9 min on an H100, .ci/gpu_check.sh; the lent machine has python3 and may lack
# make: `bash .ci/gpu_check.sh` there is the same): build with the CUDA kernels, float64 checks at production
# shapes, the sweep with the peers, the op tests, memcheck; results.csv, validated.json, summary.txt
# and logs.tar.gz in $(OUT). REHEARSE=1: the same steps on CPU with the image's triton 3.6.0 and
# transformers 5.17.0 (.venv-gpu-rehearse) and the projected device time. DRY=1 lists the steps.
OUT ?= runs/gpu-check/out
REHEARSE ?= 0
gpu-check:
	@if [ "$(REHEARSE)" = 1 ]; then PY=$(PY) bash .ci/gpu_rehearse_env.sh && PY=$(PY) bash .ci/gpu_wheels.sh; fi
	REHEARSE=$(REHEARSE) DRY=$(DRY) OUT=$(OUT) bash .ci/gpu_check.sh
