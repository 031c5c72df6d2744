"""The wheels of a folder that this Python can install, for gpu-check's wheels step.

    python .ci/gpu_wheels_for.py .whl            # the installable ones on stdout, one a line
    python .ci/gpu_wheels_for.py .whl --all      # exit 1 when any one is not (the device run)

.whl holds CPython 3.12 builds for the GPU image (pillow, pydantic-core, ...); the rehearsal on a
CPU machine may run another Python, which pip refuses them on, and gets its own builds of those
packages from .ci/gpu_rehearse_env.sh. The ones left out are named on stderr.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename


def split(folder: str) -> tuple[list[str], list[str]]:
    """(wheels this interpreter supports, the others), each sorted, from `folder`/*.whl."""
    ours = set(sys_tags())
    good, bad = [], []
    for path in sorted(glob.glob(os.path.join(folder, "*.whl"))):
        tags = parse_wheel_filename(os.path.basename(path))[3]
        (good if tags & ours else bad).append(path)
    return good, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--all", action="store_true", help="fail when a wheel is not for this Python")
    args = p.parse_args(argv)
    good, bad = split(args.folder)
    if not good:
        print(f"gpu-wheels: no wheel in {args.folder} for this Python", file=sys.stderr)
        return 1
    for path in bad:
        print(
            f"gpu-wheels: left out (not for Python {sys.version.split()[0]}): {os.path.basename(path)}", file=sys.stderr
        )
    print("\n".join(good))
    return 1 if bad and args.all else 0


if __name__ == "__main__":
    sys.exit(main())
