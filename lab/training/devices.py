"""Where training runs: the device (`--device cuda|cpu`), the autocast precision (`--precision`) and, under
`torchrun`, the process group (`Distributed`).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK for every process; `Distributed.from_env` turns them into a
process group (NCCL on GPUs, gloo on the CPU), one GPU per local rank. A plain `diffv2s train` is the
one-process case of the same object, so the stages never ask whether they are distributed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from diffv2s.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
# The cache and feature steps run on rank 0 (or sharded) while the other ranks wait: an LRS3 cache takes
# hours, far past the collectives' default 10-30 min timeout.
WAIT_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (world 1 = a plain run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Distributed()
        return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    def start(self, device: torch.device) -> None:
        """Join the process group (a no-op for one process)."""
        import torch.distributed as dist

        if not self.active or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=WAIT_TIMEOUT)

    def stop(self) -> None:
        import torch.distributed as dist

        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.active:
            dist.barrier()

    def all_max(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise maximum over all processes (the values themselves for one process)."""
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [float(v) for v in t.cpu()]

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]


@dataclass(frozen=True)
class Placement:
    """Where a run's stages compute: device, precision (`fp32` | `bf16`), processes, DataLoader workers."""

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    dist: Distributed = Distributed()
    loader_workers: int = 0


def resolve_device(name: str, dist: Distributed) -> torch.device:
    """`cuda` (one GPU per local rank) or `cpu`; `auto` takes a GPU when there is one."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda: this machine has no CUDA GPU that torch can use.")
        if dist.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"local rank {dist.local_rank} has no GPU ({torch.cuda.device_count()} visible): start "
                "torchrun with --nproc-per-node at most the GPU count."
            )
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown --device {name!r}; choose cuda, cpu or auto")


def resolve_precision(name: str, device: torch.device) -> str:
    """`bf16` or `fp32`: `auto` is bf16 on a GPU that supports it, fp32 otherwise."""
    if name not in PRECISIONS:
        raise InputError(f"unknown --precision {name!r}; choose {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("--precision bf16: this GPU has no bfloat16 support; use fp32.")
    return name


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on `device` (CUDA or CPU) when precision is bf16; nothing otherwise. Weights, the
    optimiser and the EMA stay float32."""
    if precision != "bf16":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
