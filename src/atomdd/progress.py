"""Progress of long loops that would otherwise be silent for minutes (a distillation's steps, an
evaluation's training): a tqdm bar on a terminal; elsewhere (a log file, a pipe) one plain line
every `LOG_EVERY_S` seconds, so a log shows the work goes on without filling up (issue 17: 5)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY_S = 30.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts `total` units (steps, epochs of models) of one labelled task, `done` of them already
    (a resumed run); `advance(n)` after each piece of work. `shown=False`: silent."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "epoch",
        file: TextIO | None = None,
        done: int = 0,
        shown: bool = True,
    ) -> None:
        self.label, self.total, self.unit, self.shown = label, max(total, 1), unit, shown
        self.file = file if file is not None else sys.stderr
        self.done = self.start = min(done, self.total)
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if shown and getattr(self.file, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total, initial=done, desc=label, unit=unit, file=self.file, dynamic_ncols=True
            )

    def advance(self, n: int = 1, where: str = "") -> None:
        """`n` more units done; `where` says where the work is (e.g. "repeat 2/5, epoch 300/1000")."""
        self.done = min(self.done + n, self.total)
        if not self.shown:
            return
        if self.bar is not None:
            self.bar.update(n)
            if where:
                self.bar.set_postfix_str(where, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S or self.done == self.total:
            self.last = now
            elapsed = now - self.t0
            worked = self.done - self.start  # this process's share: the rate of a resumed task
            eta = _clock(elapsed / worked * (self.total - self.done)) if worked else "?"
            where = where or f"{self.unit} {self.done}/{self.total}"
            print(
                f"{self.label}: {where} ({100 * self.done / self.total:.0f} %), "
                f"{_clock(elapsed)} elapsed, ETA {eta}",
                file=self.file,
                flush=True,
            )

    def close(self, summary: str = "") -> None:
        if self.bar is not None:
            if summary:
                self.bar.set_postfix_str(summary)
            self.bar.close()
        elif summary and self.shown:
            print(f"{self.label}: {summary}", file=self.file, flush=True)
