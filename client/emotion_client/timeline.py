"""Emotion over time for recordings of any length: windows, streaming reads, a smoothed track.

Long recordings (calls, meetings, podcasts) are never loaded whole: the file is read in blocks,
downmixed and resampled as a stream, and only one window plus one block is held at a time. The
windows overlap so that every moment is judged with context on both sides; the per-second track
averages every window that covers each second, then smooths over a few seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soundfile  # type: ignore[import-untyped, unused-ignore]
import soxr  # type: ignore[import-untyped, unused-ignore]

from .audio import AudioSource, load_audio
from .errors import InvalidAudioError
from .results import Classification, LabelScore

__all__ = ["Segment", "Timeline", "TrackPoint", "Window", "build_timeline", "iter_windows", "plan_windows"]

_BLOCK_S = 10.0
"""Seconds read from a file at a time: small enough to bound memory, large enough to be cheap."""


@dataclass(frozen=True, slots=True)
class Window:
    """One slice of the recording to classify."""

    start_s: float
    """Where the slice starts, in seconds from the beginning of the recording."""
    end_s: float
    """Where the slice ends, in seconds."""
    samples: npt.NDArray[np.float32]
    """Mono float32 samples at the model's rate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """The model's answer for one window."""

    start_s: float
    """Window start in seconds."""
    end_s: float
    """Window end in seconds."""
    label: str
    """Most probable class in this window."""
    score: float
    """Probability of ``label``."""
    scores: tuple[LabelScore, ...]
    """Every class in the server's label order (not sorted), so rows line up in tables and plots."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackPoint:
    """One second of the smoothed track."""

    start_s: float
    """Second start."""
    end_s: float
    """Second end (the recording's end for the last, partial second)."""
    label: str
    """Most probable class after smoothing."""
    scores: tuple[LabelScore, ...]
    """Smoothed probabilities in the server's label order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    """Emotion over a whole recording."""

    duration_s: float
    """Length of the recording at the model's rate."""
    window_s: float
    """Window length used."""
    hop_s: float
    """Distance between window starts."""
    labels: tuple[str, ...]
    """Class labels in the server's order; every ``scores`` tuple follows it."""
    segments: tuple[Segment, ...]
    """One per window, in time order."""
    track: tuple[TrackPoint, ...]
    """One per second, smoothed over ``smooth_s`` seconds."""
    untrained: bool
    """True when the server runs random weights."""


def plan_windows(total_samples: int, window: int, hop: int) -> list[int]:
    """Window start offsets covering every sample; the last window is aligned to the end."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive sample counts, got {window} and {hop}")
    if total_samples <= window:
        return [0]
    starts = list(range(0, total_samples - window + 1, hop))
    if starts[-1] + window < total_samples:
        starts.append(total_samples - window)
    return starts


def iter_windows(
    source: AudioSource,
    *,
    sample_rate: int | None,
    target_rate: int,
    window_s: float,
    hop_s: float,
) -> Iterator[Window]:
    """Yield windows in time order; files are streamed so memory does not grow with their length."""
    if not (window_s > 0 and hop_s > 0):
        raise ValueError(f"window_s and hop_s must be positive, got {window_s} and {hop_s}")
    window = round(window_s * target_rate)
    hop = round(hop_s * target_rate)
    if isinstance(source, np.ndarray):
        audio = load_audio(source, sample_rate=sample_rate, target_rate=target_rate)
        for start in plan_windows(audio.size, window, hop):
            yield _window(audio[start : start + window], start, target_rate)
        return
    yield from _stream_file(source, target_rate=target_rate, window=window, hop=hop)


def _window(samples: npt.NDArray[np.float32], start: int, rate: int) -> Window:
    return Window(start / rate, (start + samples.size) / rate, samples)


def _stream_file(
    path: str | os.PathLike[str], *, target_rate: int, window: int, hop: int
) -> Iterator[Window]:
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise InvalidAudioError(f"audio file '{name}' does not exist or is not a file")
    try:
        handle = soundfile.SoundFile(name)
    except (OSError, RuntimeError) as error:
        raise InvalidAudioError(f"cannot read audio file '{name}': {error}") from error
    with handle:
        if handle.samplerate <= 0:
            raise InvalidAudioError(f"audio file '{name}' declares a sample rate of {handle.samplerate} Hz")
        resampler = (
            soxr.ResampleStream(handle.samplerate, target_rate, 1, dtype="float32", quality="HQ")
            if handle.samplerate != target_rate
            else None
        )
        buffer = np.zeros(0, np.float32)
        offset = 0  # sample index (at target_rate) of buffer[0]
        next_start = 0
        emitted_end = 0
        keep_from = 0  # the end-aligned last window may start anywhere after the last emitted start
        block = max(1, round(_BLOCK_S * handle.samplerate))
        for chunk in handle.blocks(blocksize=block, dtype="float32", always_2d=True):
            mono = chunk.mean(axis=1, dtype=np.float32)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=False)
            buffer = np.concatenate([buffer, mono.astype(np.float32, copy=False)])
            while next_start + window <= offset + buffer.size:
                local = next_start - offset
                yield _window(buffer[local : local + window].copy(), next_start, target_rate)
                emitted_end = next_start + window
                keep_from = next_start + 1
                next_start += hop
            drop = min(keep_from - offset, buffer.size)
            if drop > 0:
                buffer, offset = buffer[drop:], offset + drop
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            buffer = np.concatenate([buffer, tail.astype(np.float32, copy=False)])
        total = offset + buffer.size
        if total == 0:
            raise InvalidAudioError(f"audio file '{name}' contains no samples")
        if emitted_end < total:
            start = max(0, total - window)
            yield _window(buffer[start - offset :].copy(), start, target_rate)


def build_timeline(
    windows: Sequence[Window],
    results: Sequence[Classification],
    *,
    labels: Sequence[str],
    window_s: float,
    hop_s: float,
    smooth_s: float = 3.0,
    untrained: bool = False,
) -> Timeline:
    """Segments from each window's answer, then a per-second track smoothed over ``smooth_s``."""
    if len(windows) != len(results):
        raise ValueError(f"{len(windows)} windows but {len(results)} results")
    if not windows:
        raise ValueError("a timeline needs at least one window")
    labels = tuple(labels)
    probabilities = np.array([_in_label_order(result, labels) for result in results], dtype=np.float64)
    segments = tuple(
        Segment(
            start_s=w.start_s,
            end_s=w.end_s,
            label=labels[int(np.argmax(p))],
            score=float(np.max(p)),
            scores=tuple(LabelScore(label, float(v)) for label, v in zip(labels, p, strict=True)),
        )
        for w, p in zip(windows, probabilities, strict=True)
    )
    duration_s = max(w.end_s for w in windows)
    seconds = math.ceil(duration_s - 1e-9)
    per_second = np.zeros((seconds, len(labels)))
    for w, p in zip(windows, probabilities, strict=True):
        for second in range(int(w.start_s), min(seconds, math.ceil(w.end_s - 1e-9))):
            overlap = min(w.end_s, second + 1) - max(w.start_s, second)
            if overlap > 0:
                per_second[second] += overlap * p
    per_second /= np.maximum(per_second.sum(axis=1, keepdims=True), 1e-12)
    smoothed = _moving_average(per_second, max(1, round(smooth_s)))
    track = tuple(
        TrackPoint(
            start_s=float(second),
            end_s=float(min(second + 1, duration_s)),
            label=labels[int(np.argmax(row))],
            scores=tuple(LabelScore(label, float(v)) for label, v in zip(labels, row, strict=True)),
        )
        for second, row in enumerate(smoothed)
    )
    return Timeline(
        duration_s=duration_s,
        window_s=window_s,
        hop_s=hop_s,
        labels=labels,
        segments=segments,
        track=track,
        untrained=untrained,
    )


def _in_label_order(result: Classification, labels: tuple[str, ...]) -> list[float]:
    by_label = {entry.label: entry.score for entry in result.scores}
    if set(by_label) != set(labels):
        raise ValueError("timeline windows need every class score: classify them with top_k=None")
    return [by_label[label] for label in labels]


def _moving_average(rows: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Centred average over ``width`` rows; the edges average what exists, so no zero padding leaks in."""
    if width <= 1 or rows.shape[0] <= 1:
        return rows
    cumulative = np.vstack([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0)])
    half = width // 2
    out = np.empty_like(rows)
    for i in range(rows.shape[0]):
        low, high = max(0, i - half), min(rows.shape[0], i - half + width)
        out[i] = (cumulative[high] - cumulative[low]) / (high - low)
    return out
