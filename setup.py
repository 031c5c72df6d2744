"""Build of mage-fast: the `mage_fast` package, `kernels/` as `mage_fast.kernels`, and `mage_fast._C`.

`mage_fast._C` is one torch extension: `csrc/*.cpp` and `csrc/cpu/*.cpp` always (schemas in one
`TORCH_LIBRARY(mage_fast, m)` plus CPU implementations), `csrc/cuda/*.cu` only when torch is a
CUDA build and nvcc is found. Switches (environment):

  MAGE_FAST_BUILD_CUDA=0|1   force the CUDA sources off / on (on fails loudly if impossible)
  TORCH_CUDA_ARCH_LIST       respected as torch does; unset: "9.0+PTX" (Hopper SASS plus PTX that
                             the driver JIT-compiles for later GPUs, e.g. B200), or the local
                             GPU's arch when one is visible
  MAX_JOBS                   parallel compile jobs; default sized to cores and memory
                             (about 5 GB per nvcc job, 1.5 GB per g++ job)
  CUDA_HOME                  the CUDA toolkit (nvcc); its major version must match torch's CUDA

Install with `pip install --no-build-isolation -e .` (or `.`): build isolation would pull a
second, multi-GB torch into the build environment.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "9.0+PTX"


def _mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def _set_max_jobs(cuda: bool) -> None:
    # nvcc jobs peak near 5 GiB each, g++ jobs on torch headers near 1.5 GiB.
    if "MAX_JOBS" not in os.environ:
        per_job = 5.0 if cuda else 1.5
        jobs = max(1, min(os.cpu_count() or 1, int(_mem_gib() // per_job)))
        os.environ["MAX_JOBS"] = str(jobs)


def _find_nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return os.path.join(CUDA_HOME, "bin", "nvcc")
    return shutil.which("nvcc")


def _nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _want_cuda(torch) -> bool:
    forced = os.environ.get("MAGE_FAST_BUILD_CUDA")
    if forced == "0":
        return False
    nvcc = _find_nvcc()
    possible = torch.version.cuda is not None and nvcc is not None
    if forced == "1" and not possible:
        why = "torch is a CPU build" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)"
        raise RuntimeError(f"MAGE_FAST_BUILD_CUDA=1 but the CUDA extension cannot be built: {why}.")
    if not possible:
        return False
    have = _nvcc_version(nvcc)
    if have is not None and have.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise RuntimeError(
            f"nvcc at {nvcc} is CUDA {have} but torch {torch.__version__} was built with CUDA "
            f"{torch.version.cuda}: the major versions must match. Point CUDA_HOME at a CUDA "
            f"{torch.version.cuda.split('.')[0]}.x toolkit, install the torch build for CUDA {have}, "
            "or build without the CUDA kernels: MAGE_FAST_BUILD_CUDA=0 pip install --no-build-isolation ."
        )
    return True


def _set_arch_list(torch) -> None:
    # Unset: torch compiles for the GPUs it sees; with none visible (a build box, CI) it would
    # compile for every arch of the wheel, so default to Hopper SASS plus PTX: sm_90 runs the SASS,
    # later GPUs JIT the PTX instead of failing with "no kernel image is available".
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        print(f"mage-fast: no GPU visible, TORCH_CUDA_ARCH_LIST={DEFAULT_ARCH_LIST}; set it to build for others")


def _cuda_wheel_include_dirs(torch) -> list[str]:
    # CUDA torch wheels ship CUDA headers torch's own headers include (cusparse.h, ...) in the
    # nvidia-* wheels: <site-packages>/nvidia/cu13/include (cu12 twin for CUDA 12 builds).
    major = torch.version.cuda.split(".")[0]
    dirs = []
    for base in sys.path:
        for sub in (f"cu{major}", "cu13", "cu12"):
            d = os.path.join(base, "nvidia", sub, "include")
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
                break
    return dirs


def _ext_modules():
    try:
        import torch
        from torch.utils.cpp_extension import CppExtension, CUDAExtension
    except ImportError as e:  # pragma: no cover - a message for users who forgot the flag
        raise RuntimeError(
            "mage-fast builds against the torch you already have: install torch first, then "
            "`pip install --no-build-isolation .` (build isolation hides your torch)."
        ) from e

    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    cuda = _want_cuda(torch) and bool(cu_sources)
    _set_max_jobs(cuda)
    cxx = ["-O3", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    if cuda:
        _set_arch_list(torch)
        print(f"mage-fast: building the CUDA kernels ({', '.join(cu_sources)}), MAX_JOBS={os.environ['MAX_JOBS']}")
        # No --use_fast_math: exact erf GELU and expm1f/logf in the loss are part of the contract.
        nvcc = ["-O3", "-lineinfo"]  # torch adds its own -std (c++20 since 2.10)
        return [
            CUDAExtension(
                "mage_fast._C",
                cpp_sources + cu_sources,
                include_dirs=include_dirs + _cuda_wheel_include_dirs(torch),
                extra_compile_args={"cxx": cxx + ["-DMAGE_FAST_WITH_CUDA"], "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "mage_fast._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="mage-fast",
    version="0.1.0",
    description="Custom-kernel training stack for MAGE-style multimodal LLMs",
    packages=find_packages(include=["mage_fast", "mage_fast.*"]) + ["mage_fast.kernels"],
    package_dir={"mage_fast.kernels": "kernels"},
    package_data={"mage_fast.ops": ["validated.json"]},
    python_requires=">=3.10",
    # torch is not pinned: users bring their own (CUDA) build; `make install` pins the CPU one.
    install_requires=[
        "torch>=2.6",
        "transformers>=5.0",
        "accelerate>=1.1",
        "deepspeed>=0.17",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "tensorboard>=2.15",
        "tqdm>=4.60",
        "pillow>=10",
        "PyYAML>=6",
        "numpy>=1.24",
    ],
    extras_require={"triton": ["triton>=3.6"], "dev": ["pytest", "pytest-timeout", "ruff"]},
    ext_modules=_ext_modules(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
