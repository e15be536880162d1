"""The served system through the SDK's `AsyncEmotionClient.classify_many`, as an application calls it."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from .results import Point
from .timing import percentiles_ms
from .workloads import RATE, Workload


def async_client_class() -> Any | None:
    """HOOK: the SDK's async client, where this checkout has it (`emotion_client.AsyncEmotionClient`
    with `classify_many(inputs, concurrency=N)`); None skips the SDK rows with a note."""
    try:
        from emotion_client import AsyncEmotionClient
    except ImportError:
        return None
    return AsyncEmotionClient if hasattr(AsyncEmotionClient, "classify_many") else None


def sdk_point(
    grpc_url: str, workload: Workload, concurrency: int, *, budget_s: float, expected_clips_per_s: float
) -> Point:
    """`classify_many` over the workload repeated to fill the budget.

    Latency per clip is timed around each `classify` call that `classify_many` makes (a subclass
    wraps it), so it includes the client's own audio checks, like an application sees it.
    """
    client_class = async_client_class()
    assert client_class is not None
    repeats = max(1, math.ceil(expected_clips_per_s * budget_s / len(workload.clips)))
    inputs = [clip for _ in range(repeats) for clip in workload.clips]
    if len(inputs) < 2 * concurrency:
        inputs = inputs * math.ceil(2 * concurrency / len(inputs))
    latencies: list[float] = []

    class TimedClient(client_class):  # type: ignore[misc, valid-type]
        async def classify(self, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await super().classify(*args, **kwargs)
            finally:
                latencies.append(time.perf_counter() - began)

    async def measure() -> tuple[float, list[float], float]:
        async with TimedClient(grpc_url, timeout_s=600.0) as client:
            await client.classify_many(list(workload.clips[:concurrency]), RATE, concurrency=concurrency)
            latencies.clear()
            cpu_start = time.process_time()
            start = time.perf_counter()
            items = await client.classify_many(inputs, RATE, concurrency=concurrency)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        failed = [item for item in items if not item.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(items)} clips failed, e.g. {failed[0].error}")
        return wall, list(latencies), cpu

    wall, latencies, client_cpu = asyncio.run(measure())
    audio = sum(clip.size for clip in inputs) / RATE
    p50, p95, p99 = percentiles_ms(latencies)
    return Point(
        "sdk",
        workload.name,
        concurrency,
        audio / wall,
        len(inputs) / wall,
        p50,
        p95,
        p99,
        None,
        os.getloadavg()[0],
        detail={"client_cpu_s_per_audio_s": client_cpu / audio},
    )
