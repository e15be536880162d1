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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile  # type: ignore[import-untyped, unused-ignore]
import soxr  # type: ignore[import-untyped, unused-ignore]

from .audio import AudioSource, check_channels, check_sample_rate, load_audio
from .errors import InvalidAudioError
from .results import Classification, LabelScore

__all__ = [
    "Segment",
    "Timeline",
    "TrackPoint",
    "Window",
    "build_timeline",
    "iter_windows",
    "plan_windows",
    "save_timeline_png",
    "timeline_to_dict",
]

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
        check_sample_rate(handle.samplerate, what=f"audio file '{name}'", from_argument=False)
        check_channels(handle.channels, what=f"audio file '{name}'")
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
    spans: Sequence[tuple[float, float]],
    results: Sequence[Classification],
    *,
    labels: Sequence[str],
    window_s: float,
    hop_s: float,
    smooth_s: float = 3.0,
    untrained: bool = False,
) -> Timeline:
    """Segments from each window's answer, then a per-second track smoothed over ``smooth_s``.

    ``spans`` are the windows' (start_s, end_s) only: callers drop the samples once sent, which
    is what keeps memory flat for hours of audio.
    """
    if len(spans) != len(results):
        raise ValueError(f"{len(spans)} windows but {len(results)} results")
    if not spans:
        raise ValueError("a timeline needs at least one window")
    labels = tuple(labels)
    probabilities = np.array([_in_label_order(result, labels) for result in results], dtype=np.float64)
    segments = tuple(
        Segment(
            start_s=start_s,
            end_s=end_s,
            label=labels[int(np.argmax(p))],
            score=float(np.max(p)),
            scores=tuple(LabelScore(label, float(v)) for label, v in zip(labels, p, strict=True)),
        )
        for (start_s, end_s), p in zip(spans, probabilities, strict=True)
    )
    duration_s = max(end_s for _, end_s in spans)
    seconds = math.ceil(duration_s - 1e-9)
    per_second = np.zeros((seconds, len(labels)))
    for (start_s, end_s), p in zip(spans, probabilities, strict=True):
        for second in range(int(start_s), min(seconds, math.ceil(end_s - 1e-9))):
            overlap = min(end_s, second + 1) - max(start_s, second)
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


def timeline_to_dict(timeline: Timeline) -> dict[str, Any]:
    """Plain JSON-ready data; scores keyed by label so the document reads on its own."""

    def scores(entries: tuple[LabelScore, ...]) -> dict[str, float]:
        return {entry.label: round(entry.score, 6) for entry in entries}

    return {
        "duration_s": round(timeline.duration_s, 3),
        "window_s": timeline.window_s,
        "hop_s": timeline.hop_s,
        "labels": list(timeline.labels),
        "untrained": timeline.untrained,
        "segments": [
            {
                "start_s": round(s.start_s, 3),
                "end_s": round(s.end_s, 3),
                "label": s.label,
                "scores": scores(s.scores),
            }
            for s in timeline.segments
        ],
        "track": [
            {"start_s": p.start_s, "end_s": round(p.end_s, 3), "label": p.label, "scores": scores(p.scores)}
            for p in timeline.track
        ],
    }


def save_timeline_png(timeline: Timeline, path: str | os.PathLike[str]) -> Path:
    """Each class's smoothed probability over time, the winning class shaded behind; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("plots need matplotlib: pip install 'emotion-client[plot]'") from error
    times = np.array([(p.start_s + p.end_s) / 2 for p in timeline.track])
    values = np.array([[entry.score for entry in p.scores] for p in timeline.track])
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    figure, axes = plt.subplots(figsize=(max(8.0, min(24.0, timeline.duration_s / 20)), 3.5))
    for point in timeline.track:
        index = timeline.labels.index(point.label)
        axes.axvspan(point.start_s, point.end_s, color=colours[index % len(colours)], alpha=0.12, linewidth=0)
    for index, label in enumerate(timeline.labels):
        axes.plot(times, values[:, index], color=colours[index % len(colours)], label=label, linewidth=1.5)
    axes.set_xlim(0, timeline.duration_s)
    axes.set_ylim(0, 1)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("probability")
    title = "emotion over time (shading: top label)"
    axes.set_title(title + (" - UNTRAINED model" if timeline.untrained else ""))
    axes.legend(loc="upper right", ncol=len(timeline.labels))
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
