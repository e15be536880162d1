"""How a system called from this process is timed: the HF pipeline and the in-process module."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from emotion_build.triton_models.waveform import FloatArray

from .progress import describe_point, log
from .results import Point
from .workloads import RATE, Workload, batches_of


def percentiles_ms(latencies_s: Sequence[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_loop(
    call: Callable[[list[FloatArray]], object],
    workload: Workload,
    size: int,
    *,
    system: str,
    budget_s: float,
    min_calls: int = 2,
    device: str = "cpu",
) -> Point:
    """`call` on the workload's clips in batches of `size`: one untimed pass over every batch (the same
    warm-up the served system gets: `perf_analyzer.warm_pass`), then calls until `budget_s` has passed
    (and at least `min_calls`)."""
    batches = batches_of(workload, size)
    for batch in batches:
        call(batch)
    synchronise(device)
    latencies, audio, clips = [], 0.0, 0
    cpu_start, start = time.process_time(), time.perf_counter()
    index = 0
    while index < min_calls or time.perf_counter() - start < budget_s:
        batch = batches[index % len(batches)]
        began = time.perf_counter()
        call(batch)
        synchronise(device)
        latencies.append(time.perf_counter() - began)
        audio += sum(clip.size for clip in batch) / RATE
        clips += len(batch)
        index += 1
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    p50, p95, p99 = percentiles_ms(latencies)
    point = Point(
        system, workload.name, size, audio / wall, clips / wall, p50, p95, p99, cpu / audio, os.getloadavg()[0]
    )
    log(describe_point(point))
    return point
