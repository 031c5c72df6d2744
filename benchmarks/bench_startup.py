"""Data start-up: the image check before the first step, the full decode of every image by every
rank (the check this replaces) against `mage_fast.data.scan` (structure only, split over the
ranks, cached in run_dir), for 1 and 2 ranks (a real gloo group), first run and resume.

    python -m benchmarks.bench_startup --n 20000        # CPU; images generated once into --out

Images: n distinct 640x480 JPEGs (LLaVA's typical size; a few shapes on a gradient, quality 90).
Each case runs in fresh processes; its time is the slowest rank's wall time from a barrier to
the end of the check (the cache read and write included). Rows: op "startup", provider
full_decode | scan | scan_resume, shape "n=...,ranks=R".
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from PIL import Image, ImageDraw

from benchmarks import common
from mage_fast.data.image import load_image
from mage_fast.data.scan import scan_images
from mage_fast.train.dist import all_gather_objects


def make_images(out: str, n: int) -> list[str]:
    """n distinct JPEGs in out/ (kept between runs)."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None].repeat(480, 0).repeat(3, 2)
    paths = []
    for i in range(n):
        path = os.path.join(out, f"{i:06d}.jpg")
        paths.append(path)
        if os.path.isfile(path):
            continue
        img = Image.fromarray((base * rng.uniform(0.3, 1.0, 3)).astype(np.uint8))
        d = ImageDraw.Draw(img)
        for _ in range(3):
            x, y, r = int(rng.integers(40, 600)), int(rng.integers(40, 440)), int(rng.integers(10, 60))
            d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(path, "JPEG", quality=90)
    return paths


def _full_decode(paths: list[str]) -> None:

    for p in paths:
        load_image(p)


def _rank(rank: int, world: int, port: int, case: str, paths: list[str], cache: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)

    tdist.barrier()
    t0 = time.perf_counter()
    if case == "full_decode":  # every rank decodes every image, as LlavaDataset's validation did
        _full_decode(paths)
    else:
        gather = lambda o: all_gather_objects(o, world)  # noqa: E731
        scan_images(paths, rank=rank, world=world, gather=gather, workers=1, cache=cache)
    tdist.barrier()
    out.put((rank, time.perf_counter() - t0))
    tdist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: str, world: int, paths: list[str], cache: str) -> float:
    """Seconds of the slowest rank."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, case, paths, cache, q)) for r in range(world)]
    for p in procs:
        p.start()
    times = [q.get(timeout=3600)[1] for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--out", default=os.path.join(common.ROOT, "runs", "bench-startup"))
    p.add_argument("--csv", default=common.RESULTS_CSV)
    args = p.parse_args(argv)
    t0 = time.time()
    paths = make_images(os.path.join(args.out, "images"), args.n)
    print(f"[startup] {len(paths)} images ready in {time.time() - t0:.0f} s", flush=True)
    ident = {
        "op": "startup",
        "mode": "full",
        "dtype": "uint8",
        **common.run_identity(torch.device("cpu")),
        "reps": 1,
        "status": "ok",
    }
    rows = []
    for world in (1, 2):
        cache = os.path.join(args.out, f"run{world}", "image_check.json")
        if os.path.isfile(cache):
            os.remove(cache)
        for case, provider in (("full_decode", "full_decode"), ("scan", "scan"), ("scan", "scan_resume")):
            s = run_case(case, world, paths, cache)
            note = f"{len(paths)} 640x480 JPEGs; slowest rank's wall time; 1 torch thread and 1 check process per rank"
            rows.append(
                {
                    **ident,
                    "provider": provider,
                    "shape": f"n={len(paths)},ranks={world}",
                    "ms_median": round(s * 1e3, 1),
                    "note": note,
                }
            )
            print(f"[startup] {provider:>12} {world} rank(s): {s:.2f} s", flush=True)
    if args.csv:
        common.append_rows(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
