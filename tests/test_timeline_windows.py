"""Timeline windowing and smoothing, without a server: exact coverage, streaming equals whole-file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from emotion_client.audio import load_audio
from emotion_client.errors import InvalidAudioError
from emotion_client.results import Classification, LabelScore
from emotion_client.timeline import build_timeline, iter_windows, plan_windows

LABELS = ("neu", "hap", "ang", "sad")


@pytest.mark.parametrize(
    ("total", "window", "hop", "expected"),
    [
        (10, 4, 2, [0, 2, 4, 6]),
        (11, 4, 2, [0, 2, 4, 6, 7]),  # the last window is pulled back to end at the last sample
        (3, 4, 2, [0]),  # shorter than a window: one short window
        (12, 4, 5, [0, 5, 8]),
    ],
)
def test_windows_cover_every_sample(total: int, window: int, hop: int, expected: list[int]) -> None:
    starts = plan_windows(total, window, hop)
    assert starts == expected
    assert starts[-1] + min(window, total) == total


@pytest.mark.parametrize(("seconds", "rate"), [(1.5, 16000), (37.3, 22050), (61.0, 44100)])
def test_streamed_file_windows_equal_slices_of_the_whole_file(tmp_path: Path, seconds: float, rate: int) -> None:
    rng = np.random.default_rng(int(seconds))
    stereo = (0.1 * rng.standard_normal((round(seconds * rate), 2))).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, stereo, rate, subtype="FLOAT")
    whole = load_audio(path, sample_rate=None, target_rate=16000)
    windows = list(iter_windows(path, sample_rate=None, target_rate=16000, window_s=4.0, hop_s=2.0))
    starts = [round(w.start_s * 16000) for w in windows]
    assert starts == plan_windows(whole.size, 64000, 32000)
    for window, start in zip(windows, starts, strict=True):
        np.testing.assert_allclose(window.samples, whole[start : start + window.samples.size], atol=1e-6)
    assert windows[-1].end_s == pytest.approx(whole.size / 16000)


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError, match=r"missing\.wav"):
        list(iter_windows(tmp_path / "missing.wav", sample_rate=None, target_rate=16000, window_s=4, hop_s=2))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(InvalidAudioError, match=r"junk\.wav"):
        list(iter_windows(junk, sample_rate=None, target_rate=16000, window_s=4, hop_s=2))


def _result(probabilities: list[float]) -> Classification:
    scores = sorted(
        (LabelScore(label, p) for label, p in zip(LABELS, probabilities, strict=True)), key=lambda s: -s.score
    )
    return Classification(label=scores[0].label, score=scores[0].score, scores=tuple(scores), untrained=False)


def test_track_averages_covering_windows_and_smooths() -> None:
    windows = [(0.0, 2.0), (1.0, 3.0)]
    results = [_result([1.0, 0.0, 0.0, 0.0]), _result([0.0, 0.0, 1.0, 0.0])]
    timeline = build_timeline(windows, results, labels=LABELS, window_s=2, hop_s=1, smooth_s=1)
    assert [s.label for s in timeline.segments] == ["neu", "ang"]
    assert [s.label for s in timeline.segments[0].scores] == list(LABELS)  # label order, not sorted
    assert timeline.duration_s == 3.0
    track = [[score.score for score in point.scores] for point in timeline.track]
    np.testing.assert_allclose(track, [[1.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0]])
    smoothed = build_timeline(windows, results, labels=LABELS, window_s=2, hop_s=1, smooth_s=3)
    np.testing.assert_allclose([p.score for p in smoothed.track[1].scores], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_allclose([p.score for p in smoothed.track[0].scores], [0.75, 0, 0.25, 0])


def test_timeline_needs_full_scores() -> None:
    partial = Classification(label="neu", score=0.9, scores=(LabelScore("neu", 0.9),), untrained=False)
    with pytest.raises(ValueError, match="top_k=None"):
        build_timeline([(0.0, 1.0)], [partial], labels=LABELS, window_s=1, hop_s=1)
