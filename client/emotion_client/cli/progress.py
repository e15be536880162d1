"""A dependency-free progress bar for the CLI, written to stderr so stdout stays machine-readable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from ..results import BatchProgress

__all__ = ["ProgressBar"]

_BAR_WIDTH = 28
_REDRAW_INTERVAL_S = 0.1
"""Redraws on a terminal are throttled to this; the last one always happens."""
_MIN_RATE_ELAPSED_S = 0.5
_LINE_INTERVAL_S = 2.0
"""Without a terminal (a log file), one line this often instead of redrawing in place."""


class ProgressBar:
    """``on_progress`` callback that draws ``label done/total [####----] pct failed rate``."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO,
        label: str = "classify",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._total = total
        self._stream = stream
        self._label = label
        self._clock = clock
        self._started = clock()
        self._last_draw = float("-inf")
        self._last_width = 0
        self._terminal = _isatty(stream)
        self._drawn = False

    def __call__(self, progress: BatchProgress) -> None:
        """Record one finished input and redraw when due."""
        self.update(progress.done, failed=progress.failed)

    def update(self, done: int, *, failed: int = 0) -> None:
        """Show ``done`` of the total (inputs, or seconds of a timeline) and redraw when due."""
        now = self._clock()
        final = done >= self._total
        interval = _REDRAW_INTERVAL_S if self._terminal else _LINE_INTERVAL_S
        if not final and now - self._last_draw < interval:
            return
        self._last_draw = now
        line = self.render(done, failed, now - self._started)
        if self._terminal:
            self._stream.write("\r" + line.ljust(self._last_width))
            self._last_width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._drawn = True

    def render(self, done: int, failed: int, elapsed_s: float) -> str:
        """The text of the bar for ``done`` of the total, ``failed`` of them, after ``elapsed_s``."""
        fraction = done / self._total if self._total else 1.0
        filled = round(fraction * _BAR_WIDTH)
        failures = f"  {failed} failed" if failed else ""
        # A rate over the first few hundred milliseconds says nothing; show it once it means something.
        rate = f"  {done / elapsed_s:.1f}/s" if elapsed_s >= _MIN_RATE_ELAPSED_S else ""
        return (
            f"{self._label} {done}/{self._total} [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] "
            f"{fraction:4.0%}{failures}{rate}"
        )

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self._drawn and self._terminal:
            self._stream.write("\n")
            self._stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
