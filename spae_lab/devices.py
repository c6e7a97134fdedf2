"""Where a run computes: the device, the CPU threads, the autocast precision, and the torchrun
process group.

Distributed data parallel: under `torchrun` (WORLD_SIZE > 1) every rank takes its contiguous slice
of the step's global batch; DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on
CPUs). A plain process is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spae_lab.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto" (CUDA if available, else CPU) or a torch device name; ConfigError for a name torch
    does not know or a CUDA device this machine does not have."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s) (use auto or cpu)")
    return device


def available_cores() -> float:
    """CPUs this process may use: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU
    quota (`docker --cpus`, CI runners), which affinity does not show."""
    try:
        cores: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1.0, int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return cores


def use_the_free_cores() -> None:
    """Before torch loads: its CPU threads are the free cores (`choose_num_threads`) unless
    OMP_NUM_THREADS says otherwise. Torch takes a thread per core, and beside a busy process those
    threads wait on each other at every parallel region: reading by SmolLM2 was seen to run
    several times slower (docs/performance.md, "Threads")."""
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(choose_num_threads())


def choose_num_threads() -> int:
    """Torch threads for a run that sets none (`train.num_threads`): the available cores less the
    ones other processes keep busy (the 1-minute load average), shared among the processes torchrun
    starts on this machine (LOCAL_WORLD_SIZE), at least 1.

    Beside busy processes, threads that wait for each other at every parallel region cost more than
    they bring (docs/performance.md, "Threads")."""
    cores = available_cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(int(cores), round(cores - busy)) // local_processes)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 on CPU (bf16 is slow on CPUs without AMX)."""
    import torch

    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@dataclass
class DistributedContext:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call initialised the process group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: ExperimentConfig) -> DistributedContext:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT); a plain process gets rank 0 of 1. Backend: NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.train.batch_size % world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} (the global batch) must be "
                          f"divisible by the {world_size} processes")
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        backend = cfg.train.distributed_backend
        if backend == "auto":
            backend = "nccl" if pick_device(cfg.train.device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
        owns = True
    return DistributedContext(rank, world_size, local_rank, owns)


def all_mean(values: list[float], ctx: DistributedContext) -> list[float]:
    """Mean of per-rank values over ranks (each rank's loss is the mean over its equal slice, so
    this is the loss of the global batch)."""
    if ctx.world_size == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()
