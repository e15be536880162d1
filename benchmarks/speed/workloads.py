"""The clips every system is measured on: espeak-ng speech of fixed lengths and of mixed lengths."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from batch_drift import speech_clips

from emotion_build.triton_models.waveform import FloatArray

RATE = 16000


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    clips: tuple[FloatArray, ...]

    @property
    def mean_s(self) -> float:
        return float(np.mean([clip.size for clip in self.clips])) / RATE


def make_workloads(names: Sequence[str], *, clips_per_length: int, mixed_count: int) -> tuple[list[Workload], str]:
    rng = np.random.default_rng(2024)
    mixed_lengths = np.round(rng.uniform(1.0, 10.0, mixed_count), 1).tolist()
    wanted: dict[str, list[float]] = {}
    for name in names:
        if name == "mixed":
            wanted[name] = mixed_lengths
        else:
            wanted[name] = [float(name.removesuffix("s"))] * clips_per_length
    everything = [seconds for lengths in wanted.values() for seconds in lengths]
    clips, kind = speech_clips(everything, RATE)
    workloads, used = [], 0
    for name, lengths in wanted.items():
        label = "mixed" if name == "mixed" else f"{float(name.removesuffix('s')):g} s"
        workloads.append(Workload(label, tuple(clips[used : used + len(lengths)])))
        used += len(lengths)
    return workloads, kind


def batches_of(workload: Workload, size: int) -> list[list[FloatArray]]:
    """Consecutive clips in the workload's (shuffled) order, wrapping around, as a batcher would see them."""
    count = len(workload.clips)
    return [[workload.clips[(start + j) % count] for j in range(size)] for start in range(0, count, size)]


def guessed_clips_per_s(workload: Workload, device: str) -> float:
    """What the device serves, to size perf_analyzer's windows where nothing has been measured yet
    (--skip torchscript): about 12 audio-s/s on a 2-core CPU, 2,000 on an H200. The windows only
    need the right order of magnitude, but a CPU guess on a GPU makes them so short that ramp-up
    and drain dominate: throughput then reads low and latency as if lightly loaded."""
    return (2000.0 if device.startswith("cuda") else 12.0) / workload.mean_s
