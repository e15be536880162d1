"""classify_many throughput against a plain loop of classify(), on the tiny model served with the
export's default cpu batching (BatchingSettings' defaults, one thread per instance). Prints the best and the median
of interleaved runs (run with -s); asserts only that every way of sending gives the same answers,
never a speed."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from repositories import export_cpu_repository
from triton_probes import counts_after, settled_counts

from emotion_build.server.launcher import TritonServer
from emotion_client import AsyncEmotionClient, Classification, EmotionClient

CLIPS = 48
CLIP_S = 1.0
REPEATS = 5


@pytest.fixture(scope="module")
def default_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The tiny model exported with the export's default batching, unlike the session repository."""
    output = export_cpu_repository(
        tiny_model_dir, tmp_path_factory.mktemp("throughput") / "model_repository", "--intra-op-threads", "1"
    )
    with TritonServer(output) as server:
        yield server


def test_classify_many_against_a_plain_loop(default_server: TritonServer) -> None:
    url = default_server.endpoints.grpc_url
    rng = np.random.default_rng(0)
    clips: list[npt.NDArray[np.float32]] = [
        (0.1 * rng.standard_normal(round(CLIP_S * 16000))).astype(np.float32) for _ in range(CLIPS)
    ]
    rates: dict[tuple[str, int], list[float]] = {}
    batches: dict[tuple[str, int], list[float]] = {}
    answers: dict[tuple[str, int], list[Classification]] = {}

    def measure(key: tuple[str, int], send: Callable[[], list[Classification]]) -> None:
        before = settled_counts(url, "classifier")
        started = time.perf_counter()
        answers[key] = send()
        rate = CLIPS / (time.perf_counter() - started)
        change = counts_after(url, "classifier", before, successes=CLIPS)
        requests, executions = change.inferences, change.executions
        rates.setdefault(key, []).append(rate)
        batches.setdefault(key, []).append(requests / max(executions, 1))

    async def run_async(concurrency: int) -> list[Classification]:
        async with AsyncEmotionClient(url) as client:
            await client.model_info()
            return [item.unwrap() for item in await client.classify_many(clips, concurrency=concurrency)]

    with EmotionClient(url) as client:
        client.classify_many(clips[:8], concurrency=8)  # warm up the channel and the model instances
        plans: list[tuple[tuple[str, int], Callable[[], list[Classification]]]] = [
            (("loop of classify()", 1), lambda: [client.classify(clip) for clip in clips])
        ]

        def many(concurrency: int) -> list[Classification]:
            return [item.unwrap() for item in client.classify_many(clips, concurrency=concurrency)]

        def many_async(concurrency: int) -> list[Classification]:
            return asyncio.run(run_async(concurrency))

        plans += [(("classify_many", c), functools.partial(many, c)) for c in (1, 2, 4, 8, 16)]
        plans += [(("async classify_many", c), functools.partial(many_async, c)) for c in (4, 8, 16)]
        for _ in range(REPEATS):  # interleaved, so a busy moment on the machine does not hit one row only
            for key, send in plans:
                measure(key, send)

    baseline = max(rates[("loop of classify()", 1)])
    print(
        f"\n{CLIPS} clips of {CLIP_S:g} s, tiny wav2vec2 on CPU ({os.cpu_count()} cores), one tritonserver, "
        f"{REPEATS} runs each (interleaved)"
    )
    print(f"{'how':<22}{'concurrency':>12}{'best clips/s':>14}{'median':>9}{'best vs loop':>14}{'avg batch':>11}")
    for (name, concurrency), runs in rates.items():
        batch = float(np.mean(batches[(name, concurrency)]))
        best, median = max(runs), float(np.median(runs))
        print(f"{name:<22}{concurrency:>12}{best:>14.1f}{median:>9.1f}{best / baseline:>13.2f}x{batch:>11.2f}")

    reference = answers[("loop of classify()", 1)]
    for key, got in answers.items():
        assert [r.label for r in got] == [r.label for r in reference], key
        assert [r.score for r in got] == pytest.approx([r.score for r in reference], abs=1e-5), key
