"""Speech for the precision gate: espeak-ng sentences in several voices, or the operator's own files.

Reduced precision is judged on speech, not noise: what moves a label is how the model's answer on
real utterances shifts, and noise exercises other activations. espeak-ng (a Debian package, also
used by the tests) gives deterministic, varied speech on any machine without data sets; an
operator with recordings of their own domain passes a folder of them instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

from ..triton_models.waveform import FloatArray

__all__ = [
    "AUDIO_SUFFIXES",
    "SENTENCES",
    "VOICES",
    "SpeechUnavailableError",
    "espeak_available",
    "read_speech",
    "speech_for_measurement",
    "synthesise",
]

VOICES = ("en", "en+f3", "en+m3", "en-us", "en+f2", "en+m1", "en-gb", "en+f4")
"""espeak-ng voices and variants: male and female, three accents."""
SENTENCES = (
    "The meeting has been moved to Thursday afternoon.",
    "I can't believe you did that again!",
    "Thank you so much, this is wonderful news.",
    "I'm sorry, I don't think I can make it.",
    "Why does this keep happening to me?",
    "Please hold while I transfer your call.",
    "That is the best news I have heard all year!",
    "I suppose we could try again tomorrow.",
)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class SpeechUnavailableError(RuntimeError):
    """No speech to gate on; the message says what to install or pass."""


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesise(
    count: int, *, sample_rate: int, seed: int = 7, min_s: float = 1.0, max_s: float = 10.0
) -> list[FloatArray]:
    """`count` mono clips of seeded random lengths in [min_s, max_s], cycling voices, speeds and pitches."""
    if not espeak_available():
        raise SpeechUnavailableError(
            "espeak-ng is not installed (apt-get install espeak-ng, or `make setup`); "
            "or pass --gate-audio DIR with speech files of your own"
        )
    rng = np.random.default_rng(seed)
    clips = []
    with tempfile.TemporaryDirectory(prefix="emotion-speech-") as scratch:
        for index in range(count):
            seconds = float(rng.uniform(min_s, max_s))
            text = " ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(2 + int(seconds)))
            path = Path(scratch) / f"{index}.wav"
            speed, pitch = str(int(rng.integers(130, 200))), str(int(rng.integers(30, 70)))
            voice = VOICES[index % len(VOICES)]
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", speed, "-p", pitch, "-w", str(path), text],
                check=True,
                capture_output=True,
            )
            audio = _mono_at(path, sample_rate)
            wanted = round(seconds * sample_rate)
            while audio.size < wanted:  # a pause, then the utterance again
                audio = np.concatenate([audio, np.zeros(sample_rate // 4, np.float32), audio])
            clips.append(audio[:wanted])
    return clips


def read_speech(directory: Path, *, sample_rate: int, min_samples: int, max_samples: int) -> list[FloatArray]:
    """Every audio file in `directory` (sorted), downmixed and resampled as the SDK does, cut to `max_samples`."""
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES) if directory.is_dir() else []
    if not files:
        raise SpeechUnavailableError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {directory}")
    clips = [_mono_at(path, sample_rate)[:max_samples] for path in files]
    short = [path.name for path, clip in zip(files, clips, strict=True) if clip.size < min_samples]
    if short:
        raise SpeechUnavailableError(f"shorter than the served minimum: {', '.join(short[:5])}")
    return clips


def _mono_at(path: Path, sample_rate: int) -> FloatArray:
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise SpeechUnavailableError(f"cannot read {path.name}: {error}") from error
    mono: FloatArray = audio.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate).astype(np.float32)
    return mono


def speech_for_measurement(
    count: int, *, sample_rate: int, seed: int, directory: Path | None = None
) -> tuple[list[FloatArray], str]:
    """`count` clips for a benchmark: from `directory` where given (a machine without espeak-ng, such
    as a lent GPU, gets recorded clips), else synthesised; and where they came from."""
    if directory is None:
        return synthesise(count, sample_rate=sample_rate, seed=seed), f"espeak-ng, {len(VOICES)} voices"
    clips = read_speech(directory, sample_rate=sample_rate, min_samples=1, max_samples=2**31 - 1)[:count]
    return clips, f"{len(clips)} recorded clips from {directory.name}/"
