"""perf_analyzer's ``--input-data`` file made from speech files, as the SDK would send them.

perf_analyzer's own inputs are random bytes (NaN to the server) or zeros (silence, which skips
what normalisation does to speech), so a load test needs real clips. They are read, downmixed and
resampled by the SDK's own ``load_audio`` and checked by its ``validate_duration`` against the
server's limits, so perf_analyzer sends byte for byte the tensors ``EmotionClient.classify`` would.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .audio import load_audio
from .codec import validate_duration
from .errors import InvalidAudioError
from .results import ModelInfo

__all__ = [
    "PerfClip",
    "load_perf_clips",
    "perf_input_data",
    "perf_stream_data",
    "write_perf_data",
]


@dataclasses.dataclass(frozen=True, slots=True)
class PerfClip:
    """One request's audio: mono float32 at the model's rate, and the file it came from."""

    source: Path
    samples: npt.NDArray[np.float32]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate


def load_perf_clips(
    files: Sequence[Path], info: ModelInfo, lengths_s: Sequence[float] = ()
) -> list[PerfClip]:
    """Every file whole, or with ``lengths_s`` each file's first L seconds for every L in turn.

    The lengths cycle within each file (1 s, 4 s, 1 s, 4 s, ...) so consecutive requests differ
    in length as mixed traffic does. A file shorter than a length gives no clip of that length;
    a file too long for the server, or a length outside its limits, is an error naming the limit.
    """
    for length_s in lengths_s:
        if not (math.isfinite(length_s) and info.min_duration_s <= length_s <= info.max_duration_s):
            raise ValueError(
                f"length {length_s:g} s is outside the limits of model '{info.model_name}', "
                f"{info.min_duration_s:g} s to {info.max_duration_s:g} s"
            )
    clips: list[PerfClip] = []
    for file in files:
        # prepare_audio's two steps, apart: the duration check's message names the limit, not the file.
        samples = load_audio(file, sample_rate=None, target_rate=info.sample_rate)
        if not lengths_s:
            try:
                validate_duration(samples.shape[0], info)
            except InvalidAudioError as error:
                hint = "or pass --lengths-s to cut every file"
                raise InvalidAudioError(f"'{file}': {error}, {hint}") from error
            clips.append(PerfClip(file, samples, info.sample_rate))
            continue
        for length_s in lengths_s:
            n = round(length_s * info.sample_rate)
            if n <= samples.shape[0]:
                validate_duration(n, info)
                clips.append(PerfClip(file, np.ascontiguousarray(samples[:n]), info.sample_rate))
    if not clips:
        shortest = min(lengths_s)
        raise InvalidAudioError(f"every file is shorter than {shortest:g} s, the shortest length asked for")
    return clips


def perf_input_data(clips: Sequence[npt.NDArray[np.float32]], input_name: str) -> dict[str, Any]:
    """perf_analyzer's JSON: one entry per request, cycled in order by every concurrent stream.

    Base64 of the little-endian float32 bytes rather than a list of numbers: the exact bytes the
    SDK sends, in about a quarter of the text. The shape leaves out the batch dimension, which
    perf_analyzer adds (batch size 1) because the ensemble batches."""
    return {
        "data": [
            {
                input_name: {
                    "b64": base64.b64encode(np.ascontiguousarray(clip, "<f4").tobytes()).decode("ascii"),
                    "shape": [int(clip.size)],
                }
            }
            for clip in clips
        ]
    }


def perf_stream_data(
    clips: Sequence[npt.NDArray[np.float32]], input_name: str, *, chunk_samples: int
) -> dict[str, Any]:
    """perf_analyzer's JSON for the stream model: each clip one sequence, sent in chunks of
    `chunk_samples` (the last one shorter), as a live source would send it. perf_analyzer sets the
    START and END flags on each sequence's first and last step (--streaming, one sequence per
    concurrent client)."""
    if chunk_samples < 1:
        raise ValueError(f"chunks must hold at least one sample, got {chunk_samples}")

    def step(samples: npt.NDArray[np.float32]) -> dict[str, Any]:
        return {
            input_name: {
                "b64": base64.b64encode(np.ascontiguousarray(samples, "<f4").tobytes()).decode("ascii"),
                "shape": [int(samples.size)],
            }
        }

    return {
        "data": [
            [step(clip[start : start + chunk_samples]) for start in range(0, clip.size, chunk_samples)]
            for clip in clips
        ]
    }


def write_perf_data(path: Path, clips: Sequence[npt.NDArray[np.float32]], input_name: str) -> Path:
    """Mono clips at the model's rate (``PerfClip.samples``) as ``perf_input_data`` at ``path``."""
    path.write_text(json.dumps(perf_input_data(clips, input_name)))
    return path
