"""The run's progress: cases done of the total, the time elapsed and an estimate of the time left.

On a terminal it is one line kept below the case lines and rewritten in place; elsewhere (a CI
log, a pipe) a line every `every_s` seconds and at the end, so that a log shows the run moving
without a line per redraw. Written to stderr: stdout keeps the case lines alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def duration(seconds: float) -> str:
    """`42s`, `3m07s`, `1h02m`."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class Progress:
    """Counts finished cases; `before_output()` before printing anything else to the terminal."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 30.0,
        live: bool | None = None,
    ) -> None:
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.clock, self.every_s = clock, every_s
        self.live = self.stream.isatty() if live is None else live
        self.started = self.last_written = clock()
        self._shown = False  # a live line is on the screen

    def line(self) -> str:
        """`progress: 12/128 cases, 1m03s elapsed, about 6m05s left`."""
        elapsed = self.clock() - self.started
        text = f"progress: {self.done}/{self.total} cases, {duration(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", about {duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def start(self) -> None:
        if self.live and self.total:
            self._show()

    def before_output(self) -> None:
        """Clears the live line, so that a case line takes its place (it is drawn again below)."""
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False

    def advance(self) -> None:
        """One more case finished."""
        self.done += 1
        if self.live:
            self._show()
        elif self.clock() - self.last_written >= self.every_s or self.done == self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last_written = self.clock()

    def finish(self) -> None:
        self.before_output()

    def _show(self) -> None:
        self.before_output()
        self.stream.write(self.line())
        self.stream.flush()
        self._shown = True
