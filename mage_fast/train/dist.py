"""Process-group setup for the `deepspeed` launcher and for a plain `python -m` run."""

from __future__ import annotations

import os
import socket

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); gloo on CPU, nccl on CUDA. A single process needs no launcher."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python -m mage_fast.train`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return rank, world, local


def set_threads(requested: int) -> None:
    """Split the cores between the ranks on this machine (oversubscription halves CPU speed)."""
    if requested <= 0:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        requested = max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(requested)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(x: float | int) -> float:
    t = torch.tensor([float(x)], dtype=torch.float64)
    if torch.distributed.is_initialized() and torch.cuda.is_available():
        t = t.cuda()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return float(t.item())


def quiet_warnings() -> None:
    """DeepSpeed calls a deprecated c10d API every step; the warning floods the progress bar."""
    import warnings

    warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)


def all_reduce_vec(xs: list[float]) -> list[float]:
    """Sum a short vector over ranks in one collective (fp64)."""
    t = torch.tensor(xs, dtype=torch.float64)
    if torch.distributed.is_initialized():
        if torch.cuda.is_available():
            t = t.cuda()
        torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def all_gather_objects(obj, world: int) -> list:
    if not torch.distributed.is_initialized() or world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out
