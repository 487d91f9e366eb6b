"""The other ranks, seen through torchrun's rendezvous store: which rank broke a collective (one
that raised leaves its error there; one that left nothing and does not answer was killed), a
heartbeat per rank, and the finish line where a rank done with its share of jobs waits for the
others with no time limit, yet learns when one of them is gone.

Used once the process group is up (`parallel.init`); in a single process every helper is a no-op.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from atomdd.errors import AtomddError, RankFailure

TIMEOUT_ENV = "ATOMDD_TIMEOUT"  # seconds a collective waits for a rank that does not come (default 300)
_NOTE = "atomdd/failed/"  # store key of a rank's own error, so the others can name it
_SEEN = "atomdd/seen/"  # store key a surviving rank sets when a collective broke
_BEAT = "atomdd/beat/"  # store counter each rank's heartbeat thread adds to, every second
_DONE = "atomdd/done/"  # store key a rank sets when it reaches a finish line (numbered in call order)
_RELAY = "atomdd/relay/"  # store keys of a rank's finished results, for the main process to keep
_finish_lines = itertools.count()
_relays = itertools.count()
_heart_stop = threading.Event()


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV, "300")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise AtomddError(f"{TIMEOUT_ENV}={value!r}: expected a positive number of seconds")
    return seconds


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _ranks() -> tuple[int, int]:
    """(this rank, the world size); (0, 1) without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()  # the rendezvous store every rank already holds


def report_failure(error: BaseException) -> None:
    """Leave this rank's error in the rendezvous store, so ranks waiting on it can name it."""
    me, world = _ranks()
    if world == 1 or isinstance(error, RankFailure):
        return
    with contextlib.suppress(Exception):  # the store may be gone too; the original error still raises
        _store().set(f"{_NOTE}{me}", f"{type(error).__name__}: {first_line(error)}")


@contextlib.contextmanager
def reporting_failures() -> Iterator[None]:
    """Around a rank's share of the work: an error in it is left for the other ranks to name."""
    try:
        yield
    except BaseException as e:
        report_failure(e)
        raise


def culprit(error: BaseException) -> str:
    """Who broke a collective: a rank that left its error, else the ranks that stopped answering."""
    me, world = _ranks()
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
        return f"every other rank is alive, so this is a network or backend error: {first_line(error)}"
    except Exception:  # noqa: BLE001
        return "the rendezvous store is gone too, so rank 0 (or torchrun's agent) has stopped"


def start_heartbeat() -> None:
    """Count up in the store every second while this process works (a daemon thread, stopped at
    exit), so that a rank waiting at a finish line can tell a rank still working from one gone."""
    store, key = _store(), f"{_BEAT}{_ranks()[0]}"

    def beat() -> None:
        while not _heart_stop.wait(1.0):
            try:
                store.add(key, 1)
            except Exception:  # noqa: BLE001  (the group is gone: this process is ending)
                return

    _heart_stop.clear()
    thread = threading.Thread(target=beat, name="atomdd-heartbeat", daemon=True)
    thread.start()
    atexit.register(lambda: (_heart_stop.set(), thread.join(timeout=5.0)))  # before teardown


def finish_line(what: str) -> None:
    """Wait, with no time limit, until every rank has come here: for the end of a share of jobs
    (trainings, searches), whose length differs between ranks by more than any collective timeout.
    A rank that raised (its note) ends the wait at once, and one whose heartbeat stops for
    `ATOMDD_TIMEOUT` seconds (killed, out of memory, its node lost) ends it then, naming the rank."""
    me, world = _ranks()
    if world == 1:
        return
    line = next(_finish_lines)
    try:
        store = _store()
        store.set(f"{_DONE}{line}/{me}", "1")
        done = [f"{_DONE}{line}/{r}" for r in range(world)]
        heard = {r: (-1, time.monotonic()) for r in range(world) if r != me}  # last count, and when
        while not store.check(done):  # one request while waiting; the laggards' checks once a second
            for r in (r for r in heard if not store.check([done[r]])):
                if store.check([f"{_NOTE}{r}"]):
                    note = store.get(f"{_NOTE}{r}").decode()
                    raise RankFailure(f"rank {me} stopped at {what}: rank {r} failed: {note}")
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
        why = f"{culprit(e)} (the {first_line(e)!r} error)"
        raise RankFailure(f"rank {me} stopped at {what}: {why}") from None


class Relay:
    """Each rank's finished results, handed to the main process as they finish, through the store:
    the main process keeps them (a journal) at once, so a rank killed later, or a SIGTERM from
    torchrun ending every rank, loses none that finished (issue 29: 9). Every rank makes its relays
    in the same order (their store keys are numbered in that order); one process needs none."""

    def __init__(self) -> None:
        self.me, self.world = _ranks()
        self.key = f"{_RELAY}{next(_relays)}/"
        self.sent = 0
        self.taken = dict.fromkeys(range(1, self.world), 0)  # per other rank: results received

    def send(self, result: Any) -> None:
        """Leave one JSON-able result for the main process (no-op there: it keeps its own)."""
        if self.me == 0:
            return
        store = _store()
        store.set(f"{self.key}{self.me}/{self.sent}", json.dumps(result))
        self.sent += 1
        store.set(f"{self.key}{self.me}/count", str(self.sent))  # after the result: never ahead of it

    def receive(self) -> list[Any]:
        """On the main process, the results the other ranks sent since the last call."""
        if self.me != 0 or self.world == 1:
            return []
        got = []
        with contextlib.suppress(Exception):  # the store gone: what was received is kept
            store = _store()
            for r, taken in self.taken.items():
                count = f"{self.key}{r}/count"
                sent = int(store.get(count)) if store.check([count]) else 0
                for i in range(taken, sent):
                    got.append(json.loads(store.get(f"{self.key}{r}/{i}")))
                    self.taken[r] = i + 1
        return got
