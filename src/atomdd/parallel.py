"""torch.distributed helpers: which process this is, and the one guard every file write goes through.

A single process (no process group initialised) is rank 0 of 1 and the main process, so the
library behaves the same with or without `torchrun`; the scale-out only adds ranks.
"""

from __future__ import annotations


def chunks(n: int, size: int) -> list[range]:
    """0..n-1 in consecutive ranges of at most `size` (≥ 1): classes per forward pass, runs per
    stack, and (to come) classes per rank."""
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    if not _group_ready():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    """How many processes share the work (1 without a process group)."""
    if not _group_ready():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def is_main_process() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0
