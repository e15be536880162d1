"""Turn whatever audio a caller holds into the mono float32 signal the model expects.

Done client-side so the server receives exactly one well-formed tensor per clip and bad input
fails fast with a message that says which argument to fix, before any network round trip.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import soundfile  # type: ignore[import-untyped, unused-ignore]
import soxr  # type: ignore[import-untyped, unused-ignore]

from ._defaults import AUDIO_FILE_SUFFIXES, MAX_CHANNELS, MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ
from .errors import InvalidAudioError

__all__ = [
    "AudioSource",
    "check_channels",
    "check_sample_rate",
    "chunk_to_float32",
    "collect_audio_files",
    "find_audio_files",
    "load_audio",
]

_LOGGER = logging.getLogger(__name__)

AudioSource: TypeAlias = npt.NDArray[np.generic] | str | os.PathLike[str]
"""A 1-D (or ``(frames, channels)``) sample array, or the path of a file soundfile can read."""


def load_audio(
    source: AudioSource,
    *,
    sample_rate: int | None,
    target_rate: int,
) -> npt.NDArray[np.float32]:
    """Return ``source`` as a mono float32 array in [-1, 1] sampled at ``target_rate``.

    ``sample_rate`` describes an array source; a file's own header rate always wins, since the
    caller may not know it. Resampling happens only when the rates differ, to avoid needless
    filtering of audio already at the model's rate.
    """
    if target_rate <= 0:
        raise InvalidAudioError(f"target_rate must be a positive number of Hz, got {target_rate}")
    if isinstance(source, (str, os.PathLike)):
        samples: npt.NDArray[np.generic]
        samples, rate = _read_file(source)
        what = f"audio file '{os.fspath(source)}'"
    elif isinstance(source, np.ndarray):
        if sample_rate is None:
            raise InvalidAudioError("sample_rate is required when audio is given as an array")
        samples, rate = source, sample_rate
        what = "audio array"
    else:
        raise InvalidAudioError(
            f"audio must be a numpy array or a file path, got {type(source).__name__}; "
            "wrap lists with numpy.asarray(...)"
        )
    if rate <= 0:
        raise InvalidAudioError(f"sample_rate must be a positive number of Hz, got {rate}")
    check_sample_rate(rate, what=what, from_argument=not isinstance(source, (str, os.PathLike)))
    mono = _to_mono_float32(samples, what=what)
    if rate != target_rate:
        _LOGGER.debug("resampling %s from %d Hz to %d Hz", what, rate, target_rate)
        mono = np.asarray(soxr.resample(mono, rate, target_rate, quality="HQ"), dtype=np.float32)
    return mono


def collect_audio_files(paths: Sequence[Path], *, folders: bool = True) -> list[Path]:
    """The audio files the command line names: files as named, folders (where `folders`) as the audio
    files anywhere under them, sorted. The one collector of every command (classify, evaluate's
    manifests aside, perf-data).

    A named file that does not exist is kept: reading it fails with an error naming it, in the place
    that reports per-file failures. ValueError, with what to do, for a folder when `folders` is off,
    a folder without audio (almost surely the wrong folder), or nothing at all."""
    files: list[Path] = []
    for path in paths:
        if not path.is_dir():
            files.append(path)
            continue
        if not folders:
            raise ValueError(f"'{path}' is a directory; pass --recursive to take the audio files in it")
        found = find_audio_files(path)
        if not found:
            raise ValueError(
                f"no audio files under '{path}' (endings: {', '.join(sorted(AUDIO_FILE_SUFFIXES))})"
            )
        files.extend(found)
    if not files:
        raise ValueError("no audio files given")
    return files


def find_audio_files(folder: Path) -> list[Path]:
    """The audio files anywhere under ``folder``, by ending, sorted so that every run sees one order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_FILE_SUFFIXES)


def check_sample_rate(rate: int, *, what: str, from_argument: bool) -> None:
    """Refuse rates no recording has: resampling 1 Hz to 16 kHz would multiply the data 16000-fold."""
    if MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        return
    supported = f"supported rates are {MIN_SAMPLE_RATE_HZ} to {MAX_SAMPLE_RATE_HZ} Hz"
    if from_argument:
        raise InvalidAudioError(f"sample_rate={rate} Hz given for the {what} is absurd; {supported}")
    raise InvalidAudioError(f"{what} declares a sample rate of {rate} Hz; {supported}")


def check_channels(channels: int, *, what: str) -> None:
    """Averaging dozens of channels into one is never what a caller meant; make them choose."""
    if channels > MAX_CHANNELS:
        raise InvalidAudioError(
            f"{what} has {channels} channels; at most {MAX_CHANNELS} are downmixed, "
            "select the ones to classify"
        )


def _read_file(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int]:
    """Read a file as (frames, channels) float32, naming the file in every failure."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise InvalidAudioError(f"audio file not found: '{name}'")
    if os.path.isdir(name):
        raise InvalidAudioError(f"audio path is a directory, not a file: '{name}'")
    if os.path.getsize(name) == 0:
        raise InvalidAudioError(f"audio file is empty (0 bytes): '{name}'")
    try:
        data, rate = soundfile.read(name, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
        raise InvalidAudioError(
            f"cannot read audio file '{name}': {e}; "
            "use a format libsndfile supports (WAV, FLAC, OGG, MP3) or pass a numpy array"
        ) from e
    return np.asarray(data, dtype=np.float32), int(rate)


def chunk_to_float32(chunk: Any, *, what: str) -> npt.NDArray[np.float32]:
    """One chunk of a live stream as float32 samples: 1-D, float or integer PCM (scaled as files are),
    finite; empty is allowed (a source may hand over nothing now and then)."""
    if not isinstance(chunk, np.ndarray):
        raise InvalidAudioError(f"{what} must be a numpy array, got {type(chunk).__name__}")
    if chunk.ndim != 1:
        raise InvalidAudioError(f"{what} must be 1-D samples (mono), got shape {chunk.shape}")
    floats = _scale_to_float32(chunk, what=what)
    if not np.all(np.isfinite(floats)):
        raise InvalidAudioError(f"{what} contains NaN or infinite samples")
    return np.ascontiguousarray(floats, dtype=np.float32)


def _to_mono_float32(samples: npt.NDArray[np.generic], *, what: str) -> npt.NDArray[np.float32]:
    """Validate shape and values, scale integer PCM to [-1, 1] and downmix channels by mean."""
    if samples.ndim not in (1, 2):
        raise InvalidAudioError(
            f"{what} must be 1-D (samples) or 2-D (frames, channels), got shape {samples.shape}"
        )
    if samples.size == 0:
        raise InvalidAudioError(f"{what} contains no samples")
    if samples.ndim == 2 and samples.shape[1] > samples.shape[0]:
        # More channels than frames is almost surely a (channels, frames) array from
        # torchaudio/librosa; averaging over the wrong axis would silently garble it.
        raise InvalidAudioError(
            f"{what} has shape {samples.shape}, which looks like (channels, frames); "
            "pass it transposed (audio.T) as (frames, channels)"
        )
    if samples.ndim == 2:
        check_channels(samples.shape[1], what=what)
    floats = _scale_to_float32(samples, what=what)
    if not np.all(np.isfinite(floats)):
        raise InvalidAudioError(f"{what} contains NaN or infinite samples")
    if floats.ndim == 2:
        floats = floats.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(floats, dtype=np.float32)


def _scale_to_float32(samples: npt.NDArray[np.generic], *, what: str) -> npt.NDArray[np.float32]:
    """Map integer PCM onto [-1, 1] the way soundfile does, so arrays and files agree."""
    dtype = samples.dtype
    if np.issubdtype(dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    if np.issubdtype(dtype, np.signedinteger):
        full_scale = float(2 ** (8 * dtype.itemsize - 1))
        return (samples.astype(np.float64) / full_scale).astype(np.float32)
    if np.issubdtype(dtype, np.unsignedinteger):
        # Unsigned PCM (8-bit WAV) is offset binary: the midpoint is silence.
        half = float(2 ** (8 * dtype.itemsize - 1))
        return ((samples.astype(np.float64) - half) / half).astype(np.float32)
    raise InvalidAudioError(
        f"{what} has dtype {dtype}; use float32/float64 samples in [-1, 1] or integer PCM"
    )
