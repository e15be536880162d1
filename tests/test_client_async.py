"""AsyncEmotionClient against the real tritonserver: the same answers and errors as the blocking
client, from coroutines, with its channels bound to one event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from tritonclient.utils import InferenceServerException

from emotion_build.server.endpoints import free_port
from emotion_client import (
    AsyncEmotionClient,
    EmotionClient,
    EmotionClientError,
    InvalidAudioError,
    RequestTimeoutError,
    RetryPolicy,
    ServerUnavailableError,
    UnknownModelError,
    codec,
)


def noise(seconds: float, seed: int = 0, rate: int = 16000) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * rate))).astype(np.float32)


def test_async_answers_equal_the_blocking_client(url: str, tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    soundfile.write(path, noise(1.5, seed=4, rate=22050), 22050, subtype="PCM_16")
    clip = noise(0.8, seed=5)
    with EmotionClient(url) as blocking:
        expected: list[Any] = [blocking.classify(path), blocking.classify(clip, top_k=2), blocking.model_info()]

    async def run() -> list[Any]:
        async with AsyncEmotionClient(url) as client:
            return [await client.classify(path), await client.classify(clip, top_k=2), await client.model_info()]

    got = asyncio.run(run())
    assert got[2] == expected[2]
    for a, b in zip(got[:2], expected[:2], strict=True):
        assert [s.label for s in a.scores] == [s.label for s in b.scores]
        assert [s.score for s in a.scores] == pytest.approx([s.score for s in b.scores], abs=1e-6)
    assert len(got[1].scores) == 2


def test_concurrent_coroutines_share_one_client(url: str) -> None:
    clips = [noise(0.5, seed=i) for i in range(10)]

    async def run() -> tuple[list[Any], list[Any]]:
        async with AsyncEmotionClient(url) as client:
            sequential = [await client.classify(c) for c in clips]
            together = await asyncio.gather(*(client.classify(c) for c in clips))
            return sequential, list(together)

    sequential, together = asyncio.run(run())
    for a, b in zip(sequential, together, strict=True):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-5)


def test_async_errors_are_the_same_typed_errors(url: str) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def run() -> list[BaseException]:
        caught: list[BaseException] = []
        async with AsyncEmotionClient(url) as client:
            await client.model_info()
            for call in (
                client.classify(np.zeros(10, np.float32)),
                client.classify(noise(2.0), timeout_s=1e-4),
            ):
                try:
                    await call
                except EmotionClientError as e:
                    caught.append(e)
        async with AsyncEmotionClient(url, model_name="no-such-model") as wrong:
            try:
                await wrong.classify(noise(1.0))
            except EmotionClientError as e:
                caught.append(e)
        fast = RetryPolicy(max_retries=1, backoff_base_s=0.01, backoff_max_s=0.01)
        async with AsyncEmotionClient(dead, retry=fast) as down:
            try:
                await down.classify(noise(1.0))
            except EmotionClientError as e:
                caught.append(e)
            caught.append(ValueError(str(await down.is_ready())))
        return caught

    short, timeout, wrong_model, unavailable, ready = asyncio.run(run())
    assert type(short) is InvalidAudioError and "min_duration_s" in str(short)
    assert type(timeout) is RequestTimeoutError
    assert isinstance(timeout.__cause__, InferenceServerException)
    assert type(wrong_model) is UnknownModelError and "'no-such-model'" in str(wrong_model)
    assert type(unavailable) is ServerUnavailableError and dead in str(unavailable)
    assert str(ready) == "False"


def test_bad_options_raise_before_any_request() -> None:
    async def run() -> None:
        client = AsyncEmotionClient(f"127.0.0.1:{free_port()}")
        with pytest.raises(ValueError, match="top_k"):
            await client.classify(noise(1.0), top_k=0)
        with pytest.raises(ValueError, match="concurrency"):
            await client.classify_many([noise(1.0)], concurrency=0)
        await client.close()

    asyncio.run(run())


def test_health_wait_and_close(url: str, caplog: pytest.LogCaptureFixture) -> None:
    dead = f"127.0.0.1:{free_port()}"

    async def run() -> None:
        client = AsyncEmotionClient([url, dead])
        report = await client.health()
        assert [(h.url, h.live, h.ready) for h in report] == [(url, True, True), (dead, False, False)]
        assert await client.is_ready() is False
        with pytest.raises(ServerUnavailableError, match=dead):
            await client.wait_until_ready(0.3)
        async with AsyncEmotionClient(url) as ok:
            await ok.wait_until_ready(10)
            assert await ok.is_ready()
        await client.close()
        await client.close()  # idempotent
        with pytest.raises(EmotionClientError, match="closed"):
            await client.classify(noise(1.0))
        assert not any(h.ready for h in await client.health())

    asyncio.run(run())


def test_a_client_belongs_to_one_event_loop(url: str) -> None:
    client = AsyncEmotionClient(url)
    assert asyncio.run(client.classify(noise(1.0))).label
    with pytest.raises(EmotionClientError, match="event loop"):
        asyncio.run(client.classify(noise(1.0)))


def test_audio_is_decoded_off_the_event_loop(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File decoding and resampling run in a worker thread, so a long file never stalls the loop."""
    path = tmp_path / "clip.wav"
    soundfile.write(path, noise(3.0, seed=9, rate=44100), 44100, subtype="PCM_16")
    original = codec.prepare_audio
    threads: list[threading.Thread] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(codec, "prepare_audio", recording)

    async def run() -> None:
        async with AsyncEmotionClient(url) as client:
            await client.classify(path)

    asyncio.run(run())
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
