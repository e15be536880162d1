"""Live streams through a real server: updates equal `classify()` on the same samples, sync and async,
from the SDK and `emotion-client live`; and the faults a production stream meets (a vanished client,
an idle one, one too many, bad chunks, a server restart), each with its typed error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import tritonclient.grpc as grpcclient
from conftest import TEST_BATCHING
from process_memory import processes, resident, total
from repositories import export_cpu_repository
from triton_probes import tensor
from tritonclient.utils import InferenceServerException

from emotion_build.server.launcher import TritonServer
from emotion_client import (
    AsyncEmotionClient,
    EmotionClient,
    InvalidAudioError,
    StreamExpiredError,
    StreamInterruptedError,
    StreamRefusedError,
    StreamUpdate,
)

RATE = 16000


def pieces(audio: npt.NDArray[Any], *, seed: int, largest: int = RATE) -> Iterator[npt.NDArray[Any]]:
    """`audio` in chunks of random sizes, one sample to `largest`, some of them empty."""
    rng = np.random.default_rng(seed)
    start = 0
    while start < audio.size:
        size = int(rng.choice([0, 1, 7, 160, 1600, 4000, largest]))
        yield audio[start : start + size]
        start += size


def expected_spans(total: int, window: int, hop: int) -> list[tuple[int, int]]:
    """The windows the SDK's timeline would cut (plan_windows), the short whole stream included."""
    if total <= window:
        return [(0, total)]
    spans = [(start, start + window) for start in range(0, total - window + 1, hop)]
    if spans[-1][1] < total:
        spans.append((total - window, total))
    return spans


def check_updates(
    updates: list[StreamUpdate], audio: npt.NDArray[np.float32], client: EmotionClient, window_s: float, hop_s: float
) -> None:
    spans = [(round(u.start_s * RATE), round(u.end_s * RATE)) for u in updates]
    assert spans == expected_spans(audio.size, round(window_s * RATE), round(hop_s * RATE))
    labels = client.model_info().labels
    for update, (start, end) in zip(updates, spans, strict=True):
        alone = client.classify(audio[start:end], RATE)
        got = {s.label: s.score for s in update.classification.scores}
        want = {s.label: s.score for s in alone.scores}
        assert max(abs(got[label] - want[label]) for label in labels) <= 1e-5
        assert update.classification.label == alone.label


@pytest.fixture(scope="module")
def speech(speech_clips: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """About 13 s of espeak-ng speech at 16 kHz."""
    return np.concatenate(speech_clips[1:]).astype(np.float32)


def test_updates_equal_classify_on_the_same_samples(url: str, speech: npt.NDArray[np.float32]) -> None:
    with EmotionClient(url, timeout_s=60) as client:
        updates = list(client.stream(pieces(speech, seed=1), RATE, window_s=2.0, hop_s=0.5))
        check_updates(updates, speech, client, 2.0, 0.5)
        assert [u.end_s for u in updates] == sorted(u.end_s for u in updates)
        short = list(client.stream([speech[: RATE // 2]], RATE))  # shorter than one window: one update
        assert [(u.start_s, u.end_s) for u in short] == [(0.0, 0.5)]


def test_the_async_stream_takes_an_async_source(url: str, speech: npt.NDArray[np.float32]) -> None:
    async def source() -> AsyncIterator[npt.NDArray[np.float32]]:
        for chunk in pieces(speech, seed=2):
            await asyncio.sleep(0)
            yield chunk

    async def run() -> list[StreamUpdate]:
        async with AsyncEmotionClient(url, timeout_s=60) as client:
            return [update async for update in client.stream(source(), RATE, window_s=3.0, hop_s=1.0)]

    with EmotionClient(url, timeout_s=60) as client:
        check_updates(asyncio.run(run()), speech, client, 3.0, 1.0)


def test_integer_pcm_at_another_rate_is_resampled_as_it_streams(url: str, speech: npt.NDArray[np.float32]) -> None:
    import soxr

    at_8k = soxr.resample(speech, RATE, 8000)
    pcm = np.round(np.clip(at_8k, -1, 1) * 32767).astype(np.int16)
    with EmotionClient(url, timeout_s=60) as client:
        updates = list(client.stream(pieces(pcm, seed=3, largest=4000), 8000, window_s=2.0, hop_s=1.0))
    assert updates and abs(updates[-1].end_s - speech.size / RATE) < 0.01
    assert all(abs(sum(s.score for s in u.classification.scores) - 1) < 1e-5 for u in updates)


def test_the_cli_reads_pcm_on_stdin_and_paces_a_file(url: str, speech: npt.NDArray[np.float32], tmp_path: Path) -> None:
    pcm = np.round(np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()
    live = subprocess.run(
        [sys.executable, "-m", "emotion_client", "live", "-", "--url", url, "--window-s", "2", "--hop-s", "1"],
        input=pcm,
        capture_output=True,
        timeout=120,
    )
    assert live.returncode == 0, live.stderr
    rows = [json.loads(line) for line in live.stdout.decode().splitlines()]
    assert [(row["start_s"], row["end_s"]) for row in rows][:2] == [(0.0, 2.0), (1.0, 3.0)]
    assert all(row["label"] == max(row["scores"], key=row["scores"].get) for row in rows)
    path = tmp_path / "three-seconds.wav"
    soundfile.write(path, speech[: 3 * RATE], RATE)
    started = time.monotonic()
    paced = subprocess.run(
        [sys.executable, "-m", "emotion_client", "live", str(path), "--realtime", "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert paced.returncode == 0, paced.stderr
    assert time.monotonic() - started >= 3.0  # sent at the file's own pace
    assert [json.loads(line)["end_s"] for line in paced.stdout.splitlines()] == [3.0]


@pytest.fixture(scope="module")
def guarded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A server that holds at most 3 live streams, each forgotten after 2 s of silence."""
    output = tmp_path_factory.mktemp("guarded") / "model_repository"
    options = ("--max-streams", "3", "--stream-idle-timeout-s", "2", *TEST_BATCHING)
    with TritonServer(export_cpu_repository(tiny_model_dir, output, *options)) as server:
        yield server


def test_a_stream_past_the_limit_is_refused_and_the_others_keep_their_updates(
    guarded: TritonServer, speech: npt.NDArray[np.float32]
) -> None:
    url = guarded.endpoints.grpc_url
    release = threading.Event()

    def held_source() -> Iterator[npt.NDArray[np.float32]]:
        yield speech[: 3 * RATE]
        release.wait(60)  # the stream stays open, silent, until the refusal is seen
        yield speech[3 * RATE : 6 * RATE]

    with EmotionClient(url, timeout_s=60) as client:
        held = [client.stream(held_source(), RATE, window_s=1.0, hop_s=1.0) for _ in range(3)]
        first = [next(stream) for stream in held]  # each has started on the server
        with pytest.raises(StreamRefusedError, match="at most 3 live streams"):
            next(client.stream([speech[:RATE]], RATE, window_s=1.0, hop_s=1.0))
        release.set()
        rest = [list(stream) for stream in held]
    assert all(update.start_s == 0.0 for update in first)
    assert all(len(updates) == 5 for updates in rest)  # 6 s in 1 s windows: all six arrived


def test_a_stream_idle_past_the_timeout_is_told_so(guarded: TritonServer, speech: npt.NDArray[np.float32]) -> None:
    def slow() -> Iterator[npt.NDArray[np.float32]]:
        yield speech[: 2 * RATE]
        time.sleep(3.5)  # past the 2 s timeout
        yield speech[2 * RATE : 3 * RATE]

    with EmotionClient(guarded.endpoints.grpc_url, timeout_s=60) as client:
        updates: list[StreamUpdate] = []
        with pytest.raises(StreamExpiredError, match="timeout of 2 s"):
            for update in client.stream(slow(), RATE, window_s=1.0, hop_s=1.0):
                updates.append(update)
    assert len(updates) == 2  # what came before the silence was delivered


def raw_stream(url: str, chunk: npt.NDArray[Any], *, sequence_id: int, end: bool = False) -> Any:
    """One request on its own gRPC stream, as any tritonclient caller may send it; its first answer."""
    answers: list[tuple[Any, Any]] = []
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    client.async_stream_infer(
        "stream",
        [tensor(chunk[None, :], name="chunk")],
        sequence_id=sequence_id,
        sequence_start=True,
        sequence_end=end,
        enable_empty_final_response=True,
    )
    deadline = time.monotonic() + 30
    while not answers and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop_stream()
    client.close()
    return answers[0] if answers else (None, None)


def test_bad_chunks_end_their_stream_with_a_clear_error_and_the_others_go_on(
    guarded: TritonServer, speech: npt.NDArray[np.float32]
) -> None:
    url = guarded.endpoints.grpc_url
    bad = speech[:RATE].copy()
    bad[100] = np.nan
    _, error = raw_stream(url, bad, sequence_id=901)
    assert isinstance(error, InferenceServerException) and "audio must be finite" in error.message()
    _, error = raw_stream(url, np.full(RATE, 1e6, np.float32), sequence_id=902)
    assert "amplitude limit" in error.message()
    _, error = raw_stream(url, np.zeros(31 * RATE, np.float32), sequence_id=903)
    assert "too long" in error.message()
    with EmotionClient(url, timeout_s=60) as client:
        with pytest.raises(InvalidAudioError, match="NaN"):  # refused before it is sent
            list(client.stream([bad], RATE))
        with pytest.raises(InvalidAudioError, match="absurd"):
            list(client.stream([speech], 7))
        assert len(list(client.stream([speech[: 2 * RATE]], RATE, window_s=1.0, hop_s=1.0))) == 2


def live_streams(server: TritonServer) -> float:
    with urllib.request.urlopen(server.endpoints.metrics_url, timeout=10) as response:
        text = response.read().decode()
    (line,) = [row for row in text.splitlines() if row.startswith("emotion_live_streams{")]
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def roomy(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    output = tmp_path_factory.mktemp("roomy") / "model_repository"
    options = ("--max-streams", "256", "--stream-idle-timeout-s", "5", *TEST_BATCHING)
    with TritonServer(export_cpu_repository(tiny_model_dir, output, *options)) as server:
        yield server


ABANDONED_GROWTH_MIB = 32.0
"""PSS growth (server and stubs) allowed once 200 abandoned streams have timed out."""


def test_200_abandoned_streams_are_forgotten_and_their_memory_given_back(
    roomy: TritonServer, speech: npt.NDArray[np.float32]
) -> None:
    url = roomy.endpoints.grpc_url
    with EmotionClient(url, timeout_s=60) as client:  # warm: a stream or two before the first reading
        list(client.stream([speech[: 2 * RATE]], RATE, window_s=1.0, hop_s=1.0))
    pids = processes(roomy)
    before = total({name: resident(pid) for name, pid in pids.items()}).pss_kib / 1024
    # Each sends half a second and vanishes without END; all on one gRPC stream, so that the 200
    # are in before the first is idle past the timeout.
    answers: list[tuple[Any, Any]] = []
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    for index in range(200):
        client.async_stream_infer(
            "stream",
            [tensor(speech[None, : RATE // 2], name="chunk")],
            sequence_id=10_000 + index,
            sequence_start=True,
            enable_empty_final_response=True,
        )
    deadline = time.monotonic() + 30
    while len(answers) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop_stream()
    client.close()
    assert len(answers) == 200 and all(error is None for _, error in answers)
    assert live_streams(roomy) == 200
    deadline = time.monotonic() + 30
    while live_streams(roomy) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_streams(roomy) == 0
    after = total({name: resident(pid) for name, pid in processes(roomy).items()}).pss_kib / 1024
    print(f"PSS before {before:.1f} MiB, after 200 abandoned streams {after:.1f} MiB")
    assert after - before < ABANDONED_GROWTH_MIB


def test_a_server_restart_mid_stream_raises_a_typed_error(
    tiny_model_dir: Path, tmp_path: Path, speech: npt.NDArray[np.float32]
) -> None:
    repository = export_cpu_repository(tiny_model_dir, tmp_path / "repo", *TEST_BATCHING)
    server = TritonServer(repository)
    server.start()
    try:

        def then_restart() -> Iterator[npt.NDArray[np.float32]]:
            yield speech[: 2 * RATE]
            time.sleep(1.0)
            server.stop()
            yield speech[2 * RATE : 4 * RATE]
            time.sleep(1.0)

        with EmotionClient(server.endpoints.grpc_url, timeout_s=60) as client:
            updates = []
            with pytest.raises(StreamInterruptedError, match="start a new stream"):
                for update in client.stream(then_restart(), RATE, window_s=1.0, hop_s=1.0):
                    updates.append(update)
        assert len(updates) >= 1
    finally:
        server.stop()
