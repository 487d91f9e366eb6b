"""Progress of long work, the one implementation, so that no stretch of it is silent (issue 33: 2).

A `Progress` is one labelled task: counted (a distillation's steps, an evaluation's epochs) or of
unknown length (`stage`: loading a dataset, fitting ZCA, a test pass). On a terminal it is a tqdm
bar whose clock a ticker thread keeps moving, even while one unit of work takes long; elsewhere (a
log file, a pipe, a notebook's captured stream) it is a line when it starts, then one line every
`every()` seconds (20 by default, `$ATOMDD_PROGRESS_EVERY`) from the same ticker, whatever one unit
takes, and a line when it ends: a log shows the work goes on without filling up.

It is on by default, in the CLI and the API alike; `silenced()` turns it off for a block (the API's
`quiet=True` / `progress=False`, the CLI's `--quiet`), and only the main process shows it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from atomdd.parallel import is_main_process

EVERY_S = 20.0  # below the 30 s a user waits before wondering whether anything runs
EVERY_ENV = "ATOMDD_PROGRESS_EVERY"
_TTY_TICK_S = 1.0  # how often a terminal's bar clock moves
_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("atomdd_progress", default=True)


def every() -> float:
    """Seconds between two lines of a task in a log: `$ATOMDD_PROGRESS_EVERY`, else `EVERY_S`."""
    try:
        seconds = float(os.environ.get(EVERY_ENV, EVERY_S))
    except ValueError:
        return EVERY_S
    return seconds if math.isfinite(seconds) and seconds > 0 else EVERY_S


@contextlib.contextmanager
def silenced(quiet: bool = True) -> Iterator[None]:
    """Within the block (with `quiet`), no task shows progress; the caller's own output is its own."""
    token = _ON.set(_ON.get() and not quiet)
    try:
        yield
    finally:
        _ON.reset(token)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """One labelled task of `total` units (`unit`: "step", "epoch", …), `done` of them already (a
    resumed run); `total=None`: a task of unknown length, described by `what`. `advance(n)` after
    each piece of work, `note(where)` to say where it is without counting, `close(summary)` at the
    end (or use it as a context manager). `shown=False`, or within `silenced()`: silent."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "epoch",
        file: TextIO | None = None,
        done: int = 0,
        shown: bool = True,
        what: str = "",
    ) -> None:
        self.label, self.unit, self.where = label, unit, what
        self.total = max(total, 1) if total is not None else None
        self.shown = shown and _ON.get() and is_main_process()
        self.file = file if file is not None else sys.stderr
        self.done = self.start = min(done, self.total) if self.total is not None else 0
        self.t0 = time.monotonic()
        self.bar = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not self.shown:
            return
        if getattr(self.file, "isatty", lambda: False)():
            from tqdm import tqdm

            fmt = None if self.total is not None else "{desc}: {postfix} [{elapsed}]"
            self.bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=label,
                unit=unit,
                file=self.file,
                dynamic_ncols=True,
                bar_format=fmt,
                postfix=what or None,
            )
        else:
            self._say(self._line(started=True))
        self._ticker = threading.Thread(target=self._tick, name=f"progress: {label}", daemon=True)
        self._ticker.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1, where: str = "") -> None:
        """`n` more units done; `where` says where the work is (e.g. "repeat 2/5, epoch 300/1000")."""
        if self.total is not None:
            self.done = min(self.done + n, self.total)
        if where:
            self.where = where
        if self.bar is not None:
            self.bar.update(n)
            if where:
                self.bar.set_postfix_str(where, refresh=False)

    def note(self, where: str) -> None:
        """Say where the work is now (a test pass after training), counting nothing."""
        self.advance(0, where)

    def _line(self, started: bool = False) -> str:
        elapsed = time.monotonic() - self.t0
        if self.total is None:
            return f"{self.label}: {self.where or 'working'}" + ("" if started else f", {_clock(elapsed)}")
        where = self.where or f"{self.unit} {self.done}/{self.total}"
        if started:  # what the task is, and how much of it there is
            return f"{self.label}: {where}" + ("" if self.where else f" ({self.total} {self.unit}s in all)")
        worked = self.done - self.start  # this process's share: the rate of a resumed task
        eta = _clock(elapsed / worked * (self.total - self.done)) if worked else "?"
        return (
            f"{self.label}: {where} ({100 * self.done / self.total:.0f} %), "
            f"{_clock(elapsed)} elapsed, ETA {eta}"
        )

    def _say(self, line: str) -> None:
        try:
            print(line, file=self.file, flush=True)
        except (OSError, ValueError):  # the stream went away (a closed pipe): nothing left to tell
            self._stop.set()

    def _tick(self) -> None:
        """The ticker thread: the bar's clock every second, or a line every `every()` seconds."""
        period = _TTY_TICK_S if self.bar is not None else every()
        while not self._stop.wait(period):
            if self.bar is None:
                self._say(self._line())
                continue
            try:
                self.bar.refresh()
            except (OSError, ValueError):  # the terminal went away (a hang-up): nothing left to tell
                return

    def close(self, summary: str = "") -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None
        if self.bar is not None:
            with contextlib.suppress(OSError, ValueError):  # a terminal gone must not hide the error
                if summary:
                    self.bar.set_postfix_str(summary)
                self.bar.close()
            self.bar = None
        elif summary and self.shown:
            self._say(f"{self.label}: {summary}")
        self.shown = False  # closed: nothing more to show


def stage(label: str, what: str) -> Progress:
    """A task of unknown length (`with stage("evaluate", "loading cifar10"): …`): a line when it
    starts and one every `every()` seconds while it lasts (a clock on a terminal)."""
    return Progress(label, None, what=what)
