"""Unit tests of client-side audio loading on real files and arrays: no Triton server needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import soxr

from emotion_client import InvalidAudioError
from emotion_client.audio import load_audio


def sine(n_samples: int, rate: int, freq_hz: float = 440.0) -> npt.NDArray[np.float64]:
    return np.asarray(np.sin(2 * np.pi * freq_hz * np.arange(n_samples) / rate), dtype=np.float64)


# --- files ------------------------------------------------------------------------------------


def test_stereo_pcm16_22050_is_downmixed_and_resampled(tmp_path: Path) -> None:
    rate = 22050
    wave = sine(rate, rate)  # 1 s
    stereo = np.stack([0.6 * wave, 0.2 * wave], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, rate, subtype="PCM_16")

    mono = load_audio(path, sample_rate=None, target_rate=16000)

    assert mono.dtype == np.float32
    assert mono.ndim == 1
    assert mono.shape == (16000,)  # 1 s at the target rate
    expected = soxr.resample((0.4 * wave).astype(np.float32), rate, 16000, quality="HQ")
    np.testing.assert_allclose(mono, expected, atol=2e-3)  # mean of channels, PCM_16 quantised
    assert np.max(np.abs(mono)) == pytest.approx(0.4, abs=0.01)


def test_file_rate_wins_over_sample_rate_argument(tmp_path: Path) -> None:
    path = tmp_path / "8k.flac"
    soundfile.write(path, 0.5 * sine(4000, 8000), 8000, subtype="PCM_16")  # 0.5 s
    mono = load_audio(str(path), sample_rate=44100, target_rate=16000)
    assert mono.shape == (8000,)


def test_file_at_target_rate_is_not_resampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mono16k.wav"
    data = 0.5 * sine(1600, 16000)
    soundfile.write(path, data, 16000, subtype="PCM_16")

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("resampled although rates match")

    monkeypatch.setattr("emotion_client.audio.soxr.resample", fail)
    mono = load_audio(path, sample_rate=None, target_rate=16000)
    np.testing.assert_allclose(mono, data, atol=1 / 32768)


def test_missing_file_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(InvalidAudioError, match="not found") as excinfo:
        load_audio(path, sample_rate=None, target_rate=16000)
    assert str(path) in str(excinfo.value)


def test_zero_byte_file_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(InvalidAudioError, match="empty") as excinfo:
        load_audio(path, sample_rate=None, target_rate=16000)
    assert str(path) in str(excinfo.value)


def test_wav_without_frames_error_names_path(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    soundfile.write(path, np.zeros((0, 1)), 16000, subtype="PCM_16")
    with pytest.raises(InvalidAudioError, match="no samples") as excinfo:
        load_audio(path, sample_rate=None, target_rate=16000)
    assert str(path) in str(excinfo.value)


def test_non_audio_file_error_names_path_and_keeps_cause(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(InvalidAudioError, match="cannot read audio file") as excinfo:
        load_audio(path, sample_rate=None, target_rate=16000)
    assert str(path) in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, RuntimeError)


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidAudioError, match="directory"):
        load_audio(tmp_path, sample_rate=None, target_rate=16000)


# --- arrays -----------------------------------------------------------------------------------


def test_int16_array_is_scaled_to_unit_range() -> None:
    pcm = np.array([0, 16384, -32768, 32767, -16384], dtype=np.int16)
    out = load_audio(pcm, sample_rate=16000, target_rate=16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([0.0, 0.5, -1.0, 32767 / 32768, -0.5], dtype=np.float32))


def test_int32_and_uint8_arrays_are_scaled() -> None:
    pcm32 = np.array([0, 2**30, -(2**31)], dtype=np.int32)
    np.testing.assert_allclose(load_audio(pcm32, sample_rate=8000, target_rate=8000), [0.0, 0.5, -1.0])
    pcm8 = np.array([0, 128, 255, 192], dtype=np.uint8)  # offset binary: 128 is silence
    np.testing.assert_allclose(load_audio(pcm8, sample_rate=8000, target_rate=8000), [-1.0, 0.0, 127 / 128, 0.5])


def test_int16_array_matches_same_samples_read_from_file(tmp_path: Path) -> None:
    pcm = (sine(800, 16000) * 20000).astype(np.int16)
    path = tmp_path / "pcm.wav"
    soundfile.write(path, pcm, 16000, subtype="PCM_16")
    from_array = load_audio(pcm, sample_rate=16000, target_rate=16000)
    from_file = load_audio(path, sample_rate=None, target_rate=16000)
    np.testing.assert_array_equal(from_array, from_file)


def test_float64_array_becomes_float32_without_resampling() -> None:
    data = np.array([0.25, -0.5, 1.0])
    out = load_audio(data, sample_rate=16000, target_rate=16000)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.astype(np.float32))


def test_frames_by_channels_array_is_downmixed_by_mean() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, 0.5], [-1.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(load_audio(stereo, sample_rate=16000, target_rate=16000), [0.5, 0.5, -0.5])


def test_array_at_other_rate_is_resampled() -> None:
    out = load_audio(np.zeros(8000, dtype=np.float32), sample_rate=8000, target_rate=16000)
    assert out.shape == (16000,)
    assert out.dtype == np.float32


def test_channels_by_frames_array_is_rejected_with_hint() -> None:
    with pytest.raises(InvalidAudioError, match=r"audio\.T"):
        load_audio(np.zeros((2, 16000), dtype=np.float32), sample_rate=16000, target_rate=16000)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(0, dtype=np.float32), "no samples"),
        (np.zeros((0, 2), dtype=np.float32), "no samples"),
        (np.zeros((4, 2, 2), dtype=np.float32), "1-D"),
        (np.zeros((), dtype=np.float32), "1-D"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN or infinite"),
        (np.array([0.0, np.inf], dtype=np.float64), "NaN or infinite"),
        (np.array([True, False]), "dtype bool"),
        (np.array([1 + 1j, 0j]), "dtype complex"),
    ],
)
def test_bad_arrays_are_rejected(array: npt.NDArray[np.generic], message: str) -> None:
    with pytest.raises(InvalidAudioError, match=message):
        load_audio(array, sample_rate=16000, target_rate=16000)


@pytest.mark.parametrize("rate", [0, -16000])
def test_non_positive_sample_rate_is_rejected(rate: int) -> None:
    with pytest.raises(InvalidAudioError, match="sample_rate must be a positive"):
        load_audio(np.zeros(100, dtype=np.float32), sample_rate=rate, target_rate=16000)


def test_array_requires_sample_rate() -> None:
    with pytest.raises(InvalidAudioError, match="sample_rate is required"):
        load_audio(np.zeros(100, dtype=np.float32), sample_rate=None, target_rate=16000)


def test_list_input_gets_actionable_message() -> None:
    with pytest.raises(InvalidAudioError, match=r"numpy\.asarray"):
        load_audio([0.0, 0.1], sample_rate=16000, target_rate=16000)  # type: ignore[arg-type]


def test_invalid_audio_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        load_audio(np.zeros(0), sample_rate=16000, target_rate=16000)
