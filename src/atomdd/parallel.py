"""torch.distributed helpers: which process this is, and the one guard every file write goes through.

A single process (no process group initialised) is rank 0 of 1 and the main process, so the
library behaves the same with or without `torchrun`; the scale-out only adds ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


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


def shard(items: list, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's share of a job list that every rank builds the same way: every world-th item."""
    r, w = rank() if rank_ is None else rank_, world_size() if world is None else world
    return items[r::w]


def map_local(
    fn: Callable[[Any], Any],
    items: list,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Any]:
    """`fn` over `items` in `workers` spawned local processes (in this one when `workers` ≤ 1),
    yielding the results as they finish. `fn`, `initializer` and the arguments must pickle."""
    if workers <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(
        workers, mp.get_context("spawn"), initializer=initializer, initargs=initargs
    ) as pool:
        for future in as_completed([pool.submit(fn, item) for item in items]):
            yield future.result()
