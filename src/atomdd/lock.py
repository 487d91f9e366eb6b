"""One writer per output folder: an OS lock on `<folder>/.atomdd.lock`, taken before anything is
written there and held for the life of the command (issue 29: 1).

Without it, two processes given the same `--out` both saw an empty folder, both wrote, and the
folder ended with one run's set beside the other's metrics. Now the second is refused at once,
naming the holder's pid and command. The lock is `flock`: the kernel releases it when its holder
dies, however it dies (SIGKILL included), so a killed run never blocks the next one. The file
stays behind (removing it would race with a process about to lock it). Under torchrun only the
main process (rank 0) takes it. Within a process it is re-entrant: `distill()` holds it before the
driver loads any data, and the driver holds it again for callers that build a `Distiller` alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from atomdd.errors import AtomddError
from atomdd.folders.layout import LOCK_FILE
from atomdd.io import make_folder, write_error
from atomdd.parallel import is_main_process

log = logging.getLogger(__name__)
_held: dict[str, int] = {}  # folder (real path) → how many holds this process has open on it


@contextlib.contextmanager
def hold(folder: str | os.PathLike | None) -> Iterator[None]:
    """Own `folder` (made if missing) for the block: refused with an `AtomddError` naming the holder
    if another process owns it. No-op for None and on torchrun ranks other than the main one."""
    if folder is None or not is_main_process():
        yield
        return
    key = os.path.realpath(folder)
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = _take(Path(folder))
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        if fd is not None:
            os.close(fd)  # releases the lock


def _take(folder: Path) -> int | None:
    """Lock `folder`'s lock file and record this process in it; None where the file system has no
    locks (then a warning: nothing guards the folder)."""
    path = make_folder(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AtomddError(
                f"{folder} is in use by another atomdd process ({holder(path)}); wait for it to end, "
                "or choose another --out"
            ) from None
        log.warning("cannot lock %s (%s): another process writing there would not be noticed", path, e)
        return None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": sys.argv}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except OSError as e:
        os.close(fd)
        raise write_error(path, e) from None
    return fd


def holder(path: Path) -> str:
    """Who holds the lock file `path`, in words: "pid 123 on host, since 14:02:07: atomdd distill …"."""
    try:
        me = json.loads(path.read_text())
        since = time.strftime("%H:%M:%S", time.localtime(float(me["since"])))
        command = " ".join(map(str, me["command"]))
        return f"pid {int(me['pid'])} on {me['host']}, since {since}: {command}"
    except (OSError, ValueError, TypeError, KeyError, OverflowError):
        return "its pid is not recorded yet"
