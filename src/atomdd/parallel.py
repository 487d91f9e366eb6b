"""torch.distributed helpers: which process this is, and the one guard every file write goes through.

A single process (no process group initialised) is rank 0 of 1 and the main process, so the
library behaves the same with or without `torchrun`; the scale-out only adds ranks. `init` joins
the group torchrun describes; every collective goes through `collective`, which turns a dead or
failed peer (a closed connection, or `ATOMDD_TIMEOUT` seconds of silence) into a `RankFailure`
naming that rank (`peers`, through the rendezvous store); `gather_results` waits for a share of
jobs at a finish line with no time limit.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from atomdd import peers
from atomdd.errors import AtomddError, RankFailure


def chunks(n: int, size: int) -> list[range]:
    """0..n-1 in consecutive ranges of at most `size` (≥ 1): classes per forward pass, runs per
    stack (a rank's classes are `share`)."""
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _group_ready() -> bool:
    if "torch.distributed" not in sys.modules:  # not loaded: no group was joined (and none loads it)
        return False
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
    """Whether this process writes files: rank 0, or the only process (torchrun's RANK says so
    before the group is joined, e.g. when an output folder is locked before the data is read)."""
    if launched() and not _group_ready():
        return os.environ.get("RANK", "0") == "0"
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


# --- torchrun: joining the group, one device per rank, collectives that fail with a name ------------


def launched() -> bool:
    """Whether torchrun (or a launcher setting its variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> Any:
    """Join the process group the environment describes (torchrun's RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), once; return this rank's device (`cuda:LOCAL_RANK` for cuda). gloo on CPU, NCCL on
    GPUs; every collective gives up after `ATOMDD_TIMEOUT` seconds. A single process joins nothing."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from atomdd.hardware import resolve_device

    dev = resolve_device(device)
    if not launched() or _group_ready():
        return dev
    if dev.type == "cuda":
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AtomddError(
                f"rank {os.environ.get('RANK')} wants {dev} but this machine has {torch.cuda.device_count()} "
                "GPU(s): start at most that many ranks per machine (--nproc_per_node)"
            )
        torch.cuda.set_device(dev)
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise AtomddError(
            f"WORLD_SIZE is set but {', '.join(missing)} are not: start the ranks with torchrun"
        )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=peers.timeout_seconds()))
    except Exception as e:  # noqa: BLE001  (rendezvous errors come in many types)
        raise RankFailure(
            f"rank {os.environ['RANK']}: could not join the {backend} group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {peers.first_line(e)}"
        ) from None
    peers.start_heartbeat()
    return dev


def quiet_other_ranks() -> str:
    """For entry points: under torchrun, stdout of every rank but 0 goes to /dev/null (one table,
    one "wrote …" line); returns " (rank r of w)" to put in error lines ("" in one process)."""
    if not launched():
        return ""
    import sys

    if os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    return f" (rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']})"


def leave() -> None:
    """Leave the process group, if this process joined one (entry points, at exit)."""
    if _group_ready():
        import torch.distributed as dist

        with contextlib.suppress(Exception):  # a peer may be gone already: nothing left to tidy
            dist.destroy_process_group()


def collective(what: str, fn: Callable[[], Any]) -> Any:
    """Run one collective; a broken one raises `RankFailure` naming the rank at fault."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (gloo and NCCL raise RuntimeError, DistBackendError, ...)
        raise RankFailure(
            f"rank {rank()} stopped at {what}: {peers.culprit(e)} (the {peers.first_line(e)!r} error)"
        ) from None


def all_sum(values: Any, what: str) -> Any:
    """`values` (a tensor) summed over the ranks, in place; unchanged in a single process."""
    if world_size() > 1:
        import torch.distributed as dist

        collective(what, lambda: dist.all_reduce(values))
    return values


def broadcast(tensor: Any, what: str) -> Any:
    """Rank 0's `tensor` on every rank (same shape and dtype everywhere), in place."""
    if world_size() > 1:
        import torch.distributed as dist

        collective(what, lambda: dist.broadcast(tensor, 0))
    return tensor


def gather_rows(local: Any, counts: list[int], what: str, everywhere: bool = False) -> Any:
    """Every rank's rows (`counts[r]` of them, rank order) concatenated, on the main process (None
    elsewhere), or on every rank with `everywhere`. Pads to the largest share, so one gather works
    on gloo and NCCL alike."""
    if world_size() == 1:
        return local
    import torch
    import torch.distributed as dist

    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in counts] if everywhere or is_main_process() else None
    if everywhere:
        collective(what, lambda: dist.all_gather(parts, padded))
    else:
        collective(what, lambda: dist.gather(padded, parts, dst=0))
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]) if parts is not None else None


def gather_results(obj: Any, jobs: str) -> list[Any]:
    """Every rank's results of its share of `jobs` (picklable), in rank order, on every rank, once
    every rank has finished its share (`peers.finish_line`: no time limit while they work)."""
    peers.finish_line(f"the end of {jobs}")
    return gather_objects(obj, f"the gather of {jobs}")


def gather_objects(obj: Any, what: str) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    collective(what, lambda: dist.all_gather_object(out, obj))
    return out


def share(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous share of 0..n-1 (classes): sizes differ by at most one, rank order."""
    r, w = rank() if rank_ is None else rank_, world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (r < extra))
