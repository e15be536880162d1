"""classify_many on the real server, for both clients: order, progress, and per-item failures that
do not stop the rest."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from emotion_client import (
    AsyncEmotionClient,
    BatchItem,
    BatchProgress,
    EmotionClient,
    InvalidAudioError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from emotion_client.audio import AudioSource

Runner = Callable[..., list[BatchItem]]
"""classify_many of one of the two clients, run to completion: (url, inputs, **options) -> items."""


def run_sync(url: str, inputs: Sequence[AudioSource], **options: Any) -> list[BatchItem]:
    with EmotionClient(url) as client:
        return client.classify_many(inputs, **options)


def run_async(url: str, inputs: Sequence[AudioSource], **options: Any) -> list[BatchItem]:
    async def run() -> list[BatchItem]:
        async with AsyncEmotionClient(url) as client:
            return await client.classify_many(inputs, **options)

    return asyncio.run(run())


RUNNERS = [pytest.param(run_sync, id="sync"), pytest.param(run_async, id="async")]


def noise(seconds: float, seed: int, rate: int = 16000) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[AudioSource]:
    """Good files and arrays with three kinds of bad input between them."""
    directory = tmp_path_factory.mktemp("batch")
    good_file = directory / "good.wav"
    soundfile.write(good_file, noise(1.0, seed=1, rate=22050), 22050, subtype="PCM_16")
    corrupt = directory / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt this is not audio")
    return [
        noise(0.6, seed=2),
        str(good_file),
        str(directory / "missing.wav"),
        noise(0.7, seed=3),
        np.zeros(50, dtype=np.float32),  # shorter than the model's minimum
        corrupt,
        good_file,
        noise(1.2, seed=4),
    ]


BAD = {2: "not found", 4: "min_duration_s", 5: "cannot read"}


@pytest.fixture(scope="module")
def one_by_one(url: str, mixed_inputs: list[AudioSource]) -> dict[int, Any]:
    """What classify() says for each good input on its own."""
    with EmotionClient(url) as client:
        return {i: client.classify(source) for i, source in enumerate(mixed_inputs) if i not in BAD}


@pytest.mark.parametrize("runner", RUNNERS)
def test_failures_are_collected_per_item_in_input_order(
    runner: Runner, url: str, mixed_inputs: list[AudioSource], one_by_one: dict[int, Any]
) -> None:
    items = runner(url, mixed_inputs, concurrency=4)
    assert [item.index for item in items] == list(range(len(mixed_inputs)))
    assert [item.source is source for item, source in zip(items, mixed_inputs, strict=True)] == [True] * len(items)
    for item in items:
        if item.index in BAD:
            assert not item.ok and item.result is None
            assert isinstance(item.error, InvalidAudioError)
            assert BAD[item.index] in str(item.error)
        else:
            assert item.ok and item.error is None
            expected = one_by_one[item.index]
            assert item.unwrap().label == expected.label
            assert item.unwrap().score == pytest.approx(expected.score, abs=1e-5)


@pytest.mark.parametrize("runner", RUNNERS)
def test_unordered_results_and_progress_follow_completion(
    runner: Runner, url: str, mixed_inputs: list[AudioSource]
) -> None:
    seen: list[BatchProgress] = []
    callback_threads: set[int] = set()

    def on_progress(progress: BatchProgress) -> None:
        callback_threads.add(threading.get_ident())
        seen.append(progress)

    items = runner(url, mixed_inputs, concurrency=3, ordered=False, on_progress=on_progress, top_k=1)
    total = len(mixed_inputs)
    assert sorted(item.index for item in items) == list(range(total))
    assert [p.item.index for p in seen] == [item.index for item in items]  # completion order, both
    assert [p.done for p in seen] == list(range(1, total + 1))
    assert {p.total for p in seen} == {total}
    assert seen[-1].failed == len(BAD)
    assert [p.failed for p in seen] == sorted(p.failed for p in seen)
    assert callback_threads == {threading.get_ident()}  # the caller's thread, never a worker
    assert all(len(item.result.scores) == 1 for item in items if item.result is not None)


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("concurrency", [1, 16])
def test_any_concurrency_gives_the_same_answers(runner: Runner, url: str, concurrency: int) -> None:
    clips: list[AudioSource] = [noise(0.3 + 0.05 * i, seed=10 + i) for i in range(12)]
    items = runner(url, clips, concurrency=concurrency)
    with EmotionClient(url) as client:
        expected = [client.classify(clip) for clip in clips]
    assert all(item.ok for item in items)
    for item, want in zip(items, expected, strict=True):
        assert item.unwrap().label == want.label
        assert item.unwrap().score == pytest.approx(want.score, abs=1e-5)


@pytest.mark.parametrize("runner", RUNNERS)
def test_empty_input_sends_nothing(runner: Runner) -> None:
    calls: list[BatchProgress] = []
    # A dead endpoint: any request would fail, so an empty result proves nothing was sent.
    assert runner("127.0.0.1:9", [], on_progress=calls.append) == []
    assert calls == []


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_server_that_cannot_be_reached_fails_the_call_not_each_item(runner: Runner) -> None:
    with pytest.raises(ServerUnavailableError):
        runner("127.0.0.1:9", [noise(1.0, seed=0)] * 3)


def test_timeouts_are_per_item_errors(url: str) -> None:
    clips = [noise(2.0, seed=s) for s in range(3)]
    with EmotionClient(url) as client:
        client.model_info()
        items = client.classify_many([*clips, "missing.wav"], timeout_s=1e-4)
    assert [type(item.error) for item in items] == [RequestTimeoutError] * 3 + [InvalidAudioError]


def test_a_failing_callback_stops_the_batch(url: str) -> None:
    calls = 0

    def on_progress(progress: BatchProgress) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("stop here")

    with EmotionClient(url) as client, pytest.raises(RuntimeError, match="stop here"):
        client.classify_many([noise(0.3, seed=s) for s in range(20)], concurrency=2, on_progress=on_progress)
    assert calls == 2


def test_async_callback_failure_cancels_pending_items(url: str) -> None:
    def stop(progress: BatchProgress) -> None:
        raise RuntimeError("stop")

    async def run() -> int:
        async with AsyncEmotionClient(url) as client:
            with pytest.raises(RuntimeError, match="stop"):
                await client.classify_many(
                    [noise(0.3, seed=s) for s in range(20)],
                    concurrency=2,
                    on_progress=stop,
                )
            # The client stays usable and nothing is left running in the loop.
            await client.classify(noise(0.5, seed=0))
            return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

    assert asyncio.run(run()) == 0


def test_paths_are_accepted_as_path_objects(url: str, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"clip-{i}.flac"
        soundfile.write(path, noise(0.5, seed=20 + i, rate=48000), 48000)
        paths.append(path)
    items = run_sync(url, paths)
    assert [item.source for item in items] == paths
    assert all(item.ok for item in items)
