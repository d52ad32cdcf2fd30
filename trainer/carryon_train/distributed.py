"""Data-parallel training with PyTorch's own stack: `torchrun --nproc_per_node N -m carryon_train train …`.

torchrun starts N processes and gives each RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
`Dist.from_env` initialises the process group from them (gloo on CPU, NCCL on CUDA, each process on
cuda:LOCAL_RANK). Without those variables, or with WORLD_SIZE 1, nothing is initialised and training
is the single-process code path, unchanged.

How the work is split (train.Trainer):
- The batch order is the single-process one, a pure function of (seed, step, global batch size):
  every process computes the same global batch of windows for a step and takes its own contiguous
  slice (`shard`), so N processes see exactly the rows one process would.
- --batch-size stays the global batch: each process gets batch_size / N windows; a batch size that
  N does not divide is refused (`per_process_batch`) rather than silently changing the batch.
- The loss is the mean over the global batch's loss rows, as in one process: each process sums CE
  over its own rows and scales by N / (rows in the global batch), the row count being all-reduced
  first; DistributedDataParallel averages gradients over the N processes, so every process steps
  with the gradient of the global mean, and gradient clipping sees the same norm everywhere.
- Rank 0 alone writes checkpoints, the log, the progress bar, the held-out evaluation, the report
  and the export; a checkpoint holds the unwrapped model, the optimizer and the global step (the
  data position in global batches), none of which depends on N, so any process count resumes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class DistError(ValueError):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> "Dist":
        """Joins torchrun's process group when launched by it with more than one process; returns
        the single-process Dist otherwise. `device` is the resolved --device: 'cuda…' means NCCL and
        cuda:LOCAL_RANK (the index in --device is then ignored), anything else gloo."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_available():
            raise DistError("this torch build has no torch.distributed: run one process")
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        return cls(rank, world, local)

    def device(self, device: str) -> str:
        return f"cuda:{self.local_rank}" if self.enabled and device.startswith("cuda") else device

    def shard(self, items: Sequence[T]) -> List[T]:
        """This process's contiguous slice of a global batch (equal slices when N divides it)."""
        n = len(items)
        return list(items[n * self.rank // self.world : n * (self.rank + 1) // self.world])

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's value on every process (a small picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def per_process_batch(global_batch: int, world: int) -> int:
    """--batch-size is the global batch; refused when the process count does not divide it (an
    uneven split would change the batch the run asked for, or weigh some rows twice)."""
    if global_batch % world != 0:
        raise DistError(f"--batch-size {global_batch} is the global batch and must be divisible by the "
                        f"{world} processes (per process: {global_batch / world:g}); use a multiple of {world}")
    return global_batch // world
