"""torch.distributed helpers: which process this is, and the one guard every file write goes through.

A single process (no process group initialised) is rank 0 of 1 and the main process, so the
library behaves the same with or without `torchrun`; the scale-out only adds ranks. `init` joins
the group torchrun describes; every collective goes through `collective`, which turns a dead or
failed peer (a closed connection, or `ATOMDD_TIMEOUT` seconds of silence) into a `RankFailure`
naming that rank, found through the rendezvous store: a rank that raises leaves its error there
(`report_failure`), and a rank that left nothing and does not answer was killed.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from atomdd.errors import AtomddError


def chunks(n: int, size: int) -> list[range]:
    """0..n-1 in consecutive ranges of at most `size` (≥ 1): classes per forward pass, runs per
    stack (a rank's classes are `share`)."""
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


# --- torchrun: joining the group, one device per rank, collectives that fail with a name ------------

TIMEOUT_ENV = "ATOMDD_TIMEOUT"  # seconds a collective waits for a rank that does not come (default 300)
_NOTE = "atomdd/failed/"  # store key of a rank's own error, so the others can name it
_SEEN = "atomdd/seen/"  # store key a surviving rank sets when a collective broke
_BEAT = "atomdd/beat/"  # store counter each rank's heartbeat thread adds to, every second
_DONE = "atomdd/done/"  # store key a rank sets when it reaches a finish line (numbered in call order)
_finish_lines = itertools.count()


class RankFailure(AtomddError):
    """Another rank died, raised, or did not reach a collective in time; the message names it."""


def launched() -> bool:
    """Whether torchrun (or a launcher setting its variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV, "300")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise AtomddError(f"{TIMEOUT_ENV}={value!r}: expected a positive number of seconds")
    return seconds


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
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))
    except Exception as e:  # noqa: BLE001  (rendezvous errors come in many types)
        raise RankFailure(
            f"rank {os.environ['RANK']}: could not join the {backend} group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {_first_line(e)}"
        ) from None
    _heart_stop.clear()
    beat = threading.Thread(target=_heartbeat, args=(_store(), f"{_BEAT}{rank()}"), daemon=True)
    beat.start()
    atexit.register(_stop_heartbeat, beat)  # before the interpreter tears down what it uses
    return dev


_heart_stop = threading.Event()


def _heartbeat(store: Any, key: str) -> None:
    """Count up in the store every second while this process works, so that a rank waiting at a
    finish line can tell a rank still working from one that is gone."""
    while not _heart_stop.wait(1.0):
        try:
            store.add(key, 1)
        except Exception:  # noqa: BLE001  (the group is gone: this process is ending)
            return


def _stop_heartbeat(beat: threading.Thread) -> None:
    _heart_stop.set()
    beat.join(timeout=5.0)


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
    _heart_stop.set()
    if _group_ready():
        import torch.distributed as dist

        with contextlib.suppress(Exception):  # a peer may be gone already: nothing left to tidy
            dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()  # the rendezvous store every rank already holds


def report_failure(error: BaseException) -> None:
    """Leave this rank's error in the rendezvous store, so ranks waiting on it can name it."""
    if not _group_ready() or world_size() == 1 or isinstance(error, RankFailure):
        return
    with contextlib.suppress(Exception):  # the store may be gone too; the original error still raises
        _store().set(f"{_NOTE}{rank()}", f"{type(error).__name__}: {_first_line(error)}")


@contextlib.contextmanager
def reporting_failures() -> Iterator[None]:
    """Around a rank's share of the work: an error in it is left for the other ranks to name."""
    try:
        yield
    except BaseException as e:
        report_failure(e)
        raise


def _culprit(error: BaseException) -> str:
    """Who broke a collective: a rank that left its error, else the ranks that stopped answering."""
    me, world = rank(), world_size()
    try:
        store = _store()
        notes = [r for r in range(world) if r != me and store.check([f"{_NOTE}{r}"])]
        if notes:
            return "; ".join(f"rank {r} failed: {store.get(f'{_NOTE}{r}').decode()}" for r in notes)
        store.set(f"{_SEEN}{me}", "1")
        missing: list[int] = []
        for _ in range(30):  # ≈ 3 s for the other survivors to say so
            missing = [r for r in range(world) if r != me and not store.check([f"{_SEEN}{r}"])]
            if not missing:
                break
            time.sleep(0.1)
        if missing:
            who = ", ".join(map(str, missing))
            why = "killed, hung, out of memory, or its node lost"
            return f"rank {who} left no error and does not answer ({why})"
        return f"every other rank is alive, so this is a network or backend error: {_first_line(error)}"
    except Exception:  # noqa: BLE001
        return "the rendezvous store is gone too, so rank 0 (or torchrun's agent) has stopped"


def collective(what: str, fn: Callable[[], Any]) -> Any:
    """Run one collective; a broken one raises `RankFailure` naming the rank at fault."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (gloo and NCCL raise RuntimeError, DistBackendError, ...)
        raise RankFailure(
            f"rank {rank()} stopped at {what}: {_culprit(e)} (the {_first_line(e)!r} error)"
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


def finish_line(what: str) -> None:
    """Wait, with no time limit, until every rank has come here: for the end of a share of jobs
    (trainings, searches), whose length differs between ranks by more than any collective timeout.
    A rank that raised (its note) ends the wait at once, and one whose heartbeat stops for
    `ATOMDD_TIMEOUT` seconds (killed, out of memory, its node lost) ends it then, naming the rank."""
    if world_size() == 1:
        return
    line, me = next(_finish_lines), rank()
    try:
        store = _store()
        store.set(f"{_DONE}{line}/{me}", "1")
        done = [f"{_DONE}{line}/{r}" for r in range(world_size())]
        heard = {r: (-1, time.monotonic()) for r in range(world_size()) if r != me}  # last count, when
        while not store.check(done):  # one request while waiting; the laggards' checks once a second
            for r in (r for r in heard if not store.check([done[r]])):
                if store.check([f"{_NOTE}{r}"]):
                    raise RankFailure(
                        f"rank {me} stopped at {what}: rank {r} failed: {store.get(f'{_NOTE}{r}').decode()}"
                    )
                count, now = int(store.add(f"{_BEAT}{r}", 0)), time.monotonic()
                if count != heard[r][0]:
                    heard[r] = (count, now)
                elif now - heard[r][1] > timeout_seconds():
                    silent = f"has not answered for {now - heard[r][1]:.0f} s"
                    why = "killed, out of memory, or its node lost"
                    raise RankFailure(f"rank {me} stopped at {what}: rank {r} {silent} ({why})")
            time.sleep(1.0)
    except RankFailure:
        raise
    except Exception as e:  # noqa: BLE001  (the store itself is gone)
        raise RankFailure(
            f"rank {me} stopped at {what}: {_culprit(e)} (the {_first_line(e)!r} error)"
        ) from None


def gather_results(obj: Any, jobs: str) -> list[Any]:
    """Every rank's results of its share of `jobs` (picklable), in rank order, on every rank, once
    every rank has finished its share (`finish_line`: no time limit while they work)."""
    finish_line(f"the end of {jobs}")
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
