"""Real speech for the tests: espeak-ng sentences written to WAV files at espeak's own rate."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

SENTENCES = (
    "The meeting has been moved to Thursday afternoon.",
    "I can't believe you did that again!",
    "Thank you so much, this is wonderful news.",
    "I'm sorry, I don't think I can make it.",
)


def espeak_clip(directory: Path, seconds: float, *, index: int = 0) -> Path:
    """A speech file of exactly `seconds`, made of sentences with pauses, at espeak's 22050 Hz."""
    raw = directory / f"espeak-{index}.wav"
    text = " ".join(SENTENCES[(index + i) % len(SENTENCES)] for i in range(2 + int(seconds)))
    voice = ("en", "en+f3", "en+m3", "en-us")[index % 4]
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    audio, rate = soundfile.read(raw, dtype="int16")
    wanted = round(seconds * rate)
    while audio.size < wanted:
        audio = np.concatenate([audio, np.zeros(rate // 4, np.int16), audio])
    path = directory / f"speech-{index}-{seconds:.2f}s.wav"
    soundfile.write(path, audio[:wanted], rate, subtype="PCM_16")
    return path


def espeak_clips(directory: Path, seconds: Sequence[float], *, sample_rate: int) -> list[npt.NDArray[np.float32]]:
    """One espeak_clip per length, read back as float32 at `sample_rate`."""
    clips = []
    for index, length in enumerate(seconds):
        audio, rate = soundfile.read(espeak_clip(directory, length, index=index), dtype="float32")
        clips.append(soxr.resample(audio, rate, sample_rate).astype(np.float32))
    return clips
