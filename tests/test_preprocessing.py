"""The preprocess model's maths, without Triton: validation messages and HF-identical normalisation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from transformers import Wav2Vec2FeatureExtractor

from emotion_build.triton_models.ragged import concatenate, split_rows
from emotion_build.triton_models.waveform import WaveformError, WaveformLimits, normalise, validate

LIMITS = WaveformLimits(sample_rate=16000, min_samples=1600, max_samples=16000 * 30)


@pytest.mark.parametrize("samples", [1600, 16000, 123457])
def test_normalisation_matches_the_hf_feature_extractor(samples: int) -> None:
    rng = np.random.default_rng(samples)
    clip = (0.3 * rng.standard_normal(samples) + 0.05).astype(np.float32)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=16000)  # type: ignore[no-untyped-call]
    expected = extractor(clip, sampling_rate=16000, return_tensors="np").input_values[0]
    ours = normalise(clip, do_normalize=True)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


def test_normalisation_can_be_off_and_silence_stays_finite() -> None:
    clip = np.linspace(-1, 1, 2000, dtype=np.float32)
    np.testing.assert_array_equal(normalise(clip, do_normalize=False), clip)
    assert np.all(normalise(np.zeros(2000, np.float32), do_normalize=True) == 0)


def test_valid_clip_comes_back_one_dimensional() -> None:
    clip = validate(np.zeros((1, 4000), np.float32), LIMITS)
    assert clip.shape == (4000,)


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros((1, 100), np.float32), r"too short: 0.006 s \(100 samples at 16000 Hz\); the minimum is 0.100 s"),
        (np.zeros((1, 16000 * 31), np.float32), r"too long: 31.000 s .* the maximum is 30.000 s"),
        (np.zeros((2, 4000), np.float32), r"shape \[1, samples\].*got \[2, 4000\]"),
        (np.zeros((1, 2, 4000), np.float32), r"got \[1, 2, 4000\]"),
        (np.zeros((1, 4000), np.float64), "FP32"),
    ],
)
def test_invalid_clips_are_named_with_their_limit(audio: npt.NDArray[np.generic], message: str) -> None:
    with pytest.raises(WaveformError, match=message):
        validate(audio, LIMITS)


def test_non_finite_samples_are_counted() -> None:
    audio = np.zeros((1, 4000), np.float32)
    audio[0, :3] = np.nan
    audio[0, 10] = np.inf
    audio[0, 11] = -np.inf
    with pytest.raises(WaveformError, match="3 NaN and 2 infinite samples of 4000"):
        validate(audio, LIMITS)


def test_ragged_concatenation_matches_tritons_accumulated_counts() -> None:
    clips = [np.full((1, n), i, np.float32) for i, n in enumerate([3, 4, 5])]
    flat, ends = concatenate(clips)
    assert flat.shape == (12,)
    assert ends.dtype == np.int32
    assert ends.tolist() == [3, 7, 12]  # the example of Triton's ragged_batching.md
    rows = split_rows(np.arange(12, dtype=np.float32).reshape(3, 4), 3)
    assert [r.shape for r in rows] == [(1, 4)] * 3
    with pytest.raises(ValueError, match="2 rows for 3 requests"):
        split_rows(np.zeros((2, 4), np.float32), 3)
