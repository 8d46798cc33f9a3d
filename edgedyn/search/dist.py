"""Data-parallel helpers for ``torchrun`` (gloo on CPU, nccl on CUDA); no-ops in one process.

Training is data parallel as DDP is: every rank runs the same model on its shard of each
batch, gradients are averaged across ranks before every optimizer step (one all-reduce
per parameter after the sandwich's accumulated backward passes), so all ranks keep
identical weights. Candidate scoring in the search is split across ranks and gathered.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's contiguous slice of a batch (all of it in one process)."""
        if not self.enabled:
            return list(batch)
        n = batch[0].shape[0]
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return [t[lo:hi] for t in batch]

    def share(self, items: Sequence[T]) -> list[T]:
        """The items this rank scores (round robin)."""
        return list(items[self.rank::self.world])

    def gather(self, obj: Any) -> list[Any]:
        """All ranks' ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def sync_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average gradients over ranks (rank shards may differ in size by one sample)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                tdist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                tdist.broadcast(t.data, 0)

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()


def init_from_env(device: str = "cpu") -> Dist:
    """Join the ``torchrun`` job described by the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(tdist.get_rank(), tdist.get_world_size())


def current() -> Dist:
    """The job this process already belongs to (set up by the caller or ``init_from_env``)."""
    if tdist.is_available() and tdist.is_initialized():
        return Dist(tdist.get_rank(), tdist.get_world_size())
    return Dist()
