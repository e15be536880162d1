"""One live stream's audio, cut into windows as it arrives (NumPy only: it runs in Triton's stub).

Windows start every `hop` samples and are `window` samples long, as the SDK's timeline cuts a file
(emotion_client.timeline.plan_windows): a window is due as soon as its last sample has arrived, and
at the end of the stream one last window, aligned to the end, covers what the last due window did
not (the whole stream, when it was shorter than one window), if it is long enough for the model.
Only what a later window can still need is kept: at most one window, plus the chunk being added.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

__all__ = ["StreamError", "StreamWindows", "Window"]

FloatArray = npt.NDArray[np.float32]


class StreamError(ValueError):
    """A chunk this stream cannot take; the message is sent back to the caller as is."""


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    start: int
    """Sample index of the window's first sample, from the start of the stream."""
    samples: FloatArray


class StreamWindows:
    """The windows of one stream, in order."""

    def __init__(self, *, window: int, hop: int, min_samples: int, max_chunk: int) -> None:
        if not 0 < hop <= window:
            raise StreamError(f"need 0 < hop <= window, got hop {hop} and window {window} samples")
        if window < min_samples:
            raise StreamError(f"a window of {window} samples is shorter than the model's minimum of {min_samples}")
        self.window, self.hop, self.min_samples, self.max_chunk = window, hop, min_samples, max_chunk
        self._buffer = np.zeros(0, np.float32)
        self._offset = 0
        """Stream index of _buffer[0]."""
        self._next_start = 0
        self._emitted_end = 0

    @property
    def received(self) -> int:
        """Samples received so far."""
        return self._offset + self._buffer.size

    @property
    def buffered(self) -> int:
        """Samples held now (bounded by a window plus one chunk)."""
        return int(self._buffer.size)

    def push(self, chunk: FloatArray) -> list[Window]:
        """Add `chunk` (1-D float32); the windows it completes, in order."""
        if chunk.ndim != 1:
            raise StreamError(f"a chunk must be 1-D samples, got shape {list(chunk.shape)}")
        if chunk.size > self.max_chunk:
            raise StreamError(
                f"a chunk of {chunk.size} samples is larger than the {self.max_chunk} this server takes at once; "
                "send shorter chunks"
            )
        self._buffer = np.concatenate([self._buffer, chunk.astype(np.float32, copy=False)])
        due = []
        while self._next_start + self.window <= self.received:
            local = self._next_start - self._offset
            due.append(Window(self._next_start, self._buffer[local : local + self.window].copy()))
            self._emitted_end = self._next_start + self.window
            self._next_start += self.hop
        # Keep what the next window, or the end-aligned last one, can still need: the last `window` samples.
        keep_from = min(self._next_start, max(0, self.received - self.window))
        drop = keep_from - self._offset
        if drop > 0:
            self._buffer, self._offset = self._buffer[drop:], self._offset + drop
        return due

    def finish(self) -> Window | None:
        """The end-aligned last window, where the due windows left samples uncovered and it is long enough."""
        total = self.received
        if self._emitted_end >= total:
            return None
        start = max(0, total - self.window)
        samples = self._buffer[start - self._offset :].copy()
        return Window(start, samples) if samples.size >= self.min_samples else None
