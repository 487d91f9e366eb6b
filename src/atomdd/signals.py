"""Stop requests for long runs: entry points (the CLI, benchmark scripts) turn SIGINT, SIGTERM and
SIGHUP into a flag that the distillation driver checks between steps, so it checkpoints and stops
cleanly. The library itself installs no handlers.

While the driver runs its loop (`StopFlag.deferred`), a signal only sets the flag: the step ends,
the checkpoint is written, and `Interrupted` is raised. Further signals change nothing, so an
impatient user's second and sixth Ctrl-C cannot cut a checkpoint short (issue 29: 2). Outside the
loop (reading the data, building the models) there is nothing to save: the first signal stops
the command where it stands (`Stopped`). A hangup (a closed terminal, a dropped ssh) first points
this process's terminal output at /dev/null, since writing to a terminal that is gone fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A signal stopped the command outside the driver's loop, where there is nothing to
    checkpoint; the CLI exits with status 128 + `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class StopFlag:
    """Set when a stop was asked for; the driver finishes the current step, checkpoints, stops."""

    def __init__(self) -> None:
        self.flag = False
        self.signum = signal.SIGINT  # which signal set the flag
        self.deferring = False  # inside `deferred`: a signal only sets the flag

    def __bool__(self) -> bool:
        return self.flag

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block a signal only sets the flag, for the caller to act on when it can."""
        before, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = before


_active: StopFlag | None = None


@contextlib.contextmanager
def stop_on_signals(until_exit: bool = False) -> Iterator[StopFlag]:
    """SIGINT/SIGTERM/SIGHUP set the yielded flag instead of killing the process: the first one
    outside `StopFlag.deferred` raises `Stopped`; every later one is ignored. The previous
    handlers come back on exit, unless `until_exit` (an entry point, whose process ends with the
    block): then the signals stay ignored while the process winds down, so a late Ctrl-C cannot
    put a traceback into its exit, nor a late SIGTERM kill a finished or checkpointed run mid-exit
    (Python's own exit restores the default action of a signal it handles, not of one ignored).
    Nested, it yields the flag already installed.
    Outside the main thread no handler can be installed: the flag then never sets."""
    global _active
    if _active is not None:
        yield _active
        return
    state = StopFlag()
    terminal = [fd for fd in (1, 2) if _isatty(fd)]  # what a hangup leaves without a reader

    def handler(signum, frame):  # noqa: ARG001
        if signum == signal.SIGHUP:
            _detach(terminal)
        if state.flag:
            return
        state.flag, state.signum = True, signum
        if not state.deferring:
            raise Stopped(signum)

    try:
        old = {s: signal.signal(s, handler) for s in SIGNALS}
    except ValueError:  # not the main thread
        yield state
        return
    _active = state
    try:
        yield state
    finally:
        _active = None
        for s, h in old.items():  # ignored at the C level: Python's exit restores the defaults otherwise
            signal.signal(s, signal.SIG_IGN if until_exit else h)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _detach(fds: list[int]) -> None:
    """Point the terminal's file descriptors at /dev/null: the terminal hung up, and a write to it
    would fail (EIO) in the middle of a checkpoint."""
    if not fds:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in fds:
        os.dup2(null, fd)
    os.close(null)
    fds.clear()
