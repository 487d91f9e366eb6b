"""Stop requests for long runs: entry points (the CLI, benchmark scripts) turn SIGINT/SIGTERM into
a flag that the distillation driver checks between steps, so it checkpoints and stops cleanly. The
library itself installs no handlers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class StopFlag:
    """Set when a stop was asked for; the driver finishes the current step, checkpoints, stops."""

    def __init__(self) -> None:
        self.flag = False
        self.signum = signal.SIGINT  # which signal set the flag

    def __bool__(self) -> bool:
        return self.flag


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """SIGINT/SIGTERM set the yielded flag instead of killing the process; a second one stops now
    (KeyboardInterrupt). The previous handlers come back on exit. Outside the main thread no
    handler can be installed: the flag then never sets."""
    state = StopFlag()

    def handler(signum, frame):  # noqa: ARG001
        if state.flag:
            raise KeyboardInterrupt
        state.flag, state.signum = True, signum

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield state
        return
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)
