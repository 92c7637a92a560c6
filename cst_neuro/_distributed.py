"""Data-parallel training under ``torchrun``: the process group and agreement between ranks.

Under ``torchrun`` (WORLD_SIZE > 1) `fit` wraps its loss in DistributedDataParallel (NCCL
on GPUs, gloo on CPUs); these helpers start and end the process group and let every rank
take the same decision (stop early, stop at the deadline, cancel).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """(rank, world size), starting torch.distributed under torchrun; a process group
    started here ends here (left to interpreter exit, gloo's threads can abort a rank:
    "terminate called without an active exception")."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), world
    finally:
        if started:
            dist.destroy_process_group()


def agree(flag: bool, world: int) -> bool:
    """True on every rank if it is True on any rank."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    objects: list[Any] = [None] * world
    dist.all_gather_object(objects, obj)
    return objects
