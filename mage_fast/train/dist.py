"""Process-group setup for the `deepspeed` launcher and for a plain `python -m` run."""

from __future__ import annotations

import glob
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


# Ranks on this machine, by launcher: deepspeed's sets LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE,
# Open MPI (deepspeed --launcher openmpi) OMPI_COMM_WORLD_LOCAL_SIZE. WORLD_SIZE counts every
# machine's ranks, so dividing by it starves each rank of a multi-node job.
LOCAL_SIZE_VARS = ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")


def local_world_size(env: dict[str, str] | None = None) -> tuple[int, str]:
    """(ranks on this machine, where the number came from). Without a launcher variable: the
    visible CUDA devices (one rank each), else 1."""
    env = os.environ if env is None else env
    for var in LOCAL_SIZE_VARS:
        if env.get(var, "").strip().isdigit() and int(env[var]) > 0:
            return int(env[var]), var
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.cuda.device_count(), "CUDA device count"
    return 1, "no launcher variable (set threads=N to choose)"


def usable_cores() -> int:
    """Cores this process may run on (a cgroup or `taskset` limit counts, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(requested: int) -> int:
    """Split the cores between the ranks on this machine (oversubscription halves CPU speed);
    `requested` > 0 wins. Prints the choice once per rank; returns the thread count."""
    why = "threads in the config"
    if requested <= 0:
        local, source = local_world_size()
        cores = usable_cores()
        requested = max(1, cores // local)
        why = f"{cores} cores / {local} local ranks from {source}"
    torch.set_num_threads(requested)
    print(f"rank {os.environ.get('RANK', '0')}: {requested} torch threads ({why})", flush=True)
    return requested


def shutdown() -> None:
    """End of a launched rank: wait for the others, destroy the process group (PyTorch asks for it
    before exit: a live gloo group can abort at interpreter teardown, pytorch/pytorch#190489), and
    unlink DeepSpeed's shared-memory segments of the run. Not on an error path: the peers may be
    gone, and the barrier would wait for them."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        remove_shm_buffers()


def shm_buffers(port: str | int) -> list[str]:
    """DeepSpeed's CPU all-reduce (deepspeed/ops/csrc/cpu/comm/shm.cpp) maps one shared-memory
    segment per rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>, and never
    unlinks it (~66 MiB each at the tests' sizes): the segments of the run on master `port`."""
    return sorted(glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def remove_shm_buffers() -> None:
    """After the last collective: local rank 0 unlinks this run's segments (a mapping lives on
    until its process exits, so a rank still tearing down loses nothing)."""
    port = os.environ.get("MASTER_PORT")
    if not port or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    for path in shm_buffers(port):
        try:
            os.unlink(path)
        except OSError:  # another node's rank 0 on the same machine got there first
            pass


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
