"""EmotionClient against a real tritonserver: decoding, caching, deadlines, the error boundary,
retries, readiness, connection reuse and thread safety. No stand-in for tritonclient or the server."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from emotion_build.server.endpoints import free_port
from emotion_build.server.launcher import TritonServer
from emotion_client import (
    Classification,
    EmotionClient,
    EmotionClientError,
    IncompatibleModelError,
    InvalidAudioError,
    ModelNotReadyError,
    RequestTimeoutError,
    RetryPolicy,
    ServerUnavailableError,
    UnknownModelError,
)
from emotion_client.audio import load_audio

FAST_RETRY = RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02)


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * rate))).astype(np.float32)


def successes(url: str, model: str = "emotion") -> int:
    """Successful inferences the server has counted for ``model``: the server's view, not ours."""
    with grpcclient.InferenceServerClient(url) as admin:
        stats = admin.get_inference_statistics(model, as_json=True)
    (entry,) = stats["model_stats"]
    return int(entry["inference_stats"]["success"].get("count", 0))


def tcp_connections_to(port: int) -> int:
    """Established TCP connections that this process holds to ``port`` (from /proc, not from gRPC)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def scores_by_label(result: Classification) -> dict[str, float]:
    return {entry.label: entry.score for entry in result.scores}


@pytest.fixture
def dead_url() -> str:
    return f"127.0.0.1:{free_port()}"


def test_classify_array_at_another_rate_is_resampled(client: EmotionClient) -> None:
    pcm = (noise(1.0, rate=8000) * 32767).astype(np.int16)
    result = client.classify(pcm, 8000)
    again = client.classify(load_audio(pcm, sample_rate=8000, target_rate=16000), 16000)
    assert result.label == again.label
    assert scores_by_label(result) == pytest.approx(scores_by_label(again), abs=1e-6)
    assert sorted(scores_by_label(result)) == sorted(client.model_info().labels)
    assert sum(s.score for s in result.scores) == pytest.approx(1.0, abs=1e-5)
    assert [s.score for s in result.scores] == sorted((s.score for s in result.scores), reverse=True)


def test_a_file_uses_its_own_rate_and_top_k_limits_scores(client: EmotionClient, tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    soundfile.write(path, noise(1.0, rate=22050, seed=1), 22050, subtype="PCM_16")
    from_file = client.classify(path, sample_rate=1234, top_k=2)  # sample_rate is ignored for files
    from_array = client.classify(load_audio(path, sample_rate=None, target_rate=16000), 16000)
    assert [s.label for s in from_file.scores] == [s.label for s in from_array.scores[:2]]
    assert from_file.score == pytest.approx(from_array.score, abs=1e-6)


def test_model_info_comes_from_the_server_once(client: EmotionClient, hf_classifier: tuple[Any, Any]) -> None:
    model, _ = hf_classifier
    first = client.model_info()
    assert client.model_info() is first
    assert first.labels == tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    assert first.sample_rate == 16000 and first.untrained is False


def test_too_short_audio_fails_before_anything_is_sent(client: EmotionClient, url: str) -> None:
    client.model_info()
    before = successes(url)
    with pytest.raises(InvalidAudioError, match="min_duration_s"):
        client.classify(np.zeros(100, dtype=np.float32))
    with pytest.raises(InvalidAudioError, match="not found"):
        client.classify("/no/such/clip.wav")
    assert successes(url) == before


def test_bad_options_fail_before_any_request(dead_url: str) -> None:
    client = EmotionClient(dead_url)  # nothing listens: reaching the network would raise ServerUnavailableError
    with pytest.raises(ValueError, match="top_k"):
        client.classify(noise(1.0), top_k=0)
    with pytest.raises(ValueError, match="timeout_s"):
        client.classify(noise(1.0), timeout_s=0.0)
    with pytest.raises(ValueError, match="timeout_s"):
        EmotionClient(dead_url, timeout_s=-1)
    with pytest.raises(ValueError, match="header"):
        EmotionClient(dead_url, headers={"Bad Header": "x"})


def test_per_call_timeout_overrides_the_default(url: str) -> None:
    with EmotionClient(url, timeout_s=60) as sdk:
        sdk.model_info()
        with pytest.raises(RequestTimeoutError, match="timed out") as caught:
            sdk.classify(noise(2.0), timeout_s=1e-4)
        assert isinstance(caught.value.__cause__, InferenceServerException)
        assert caught.value.status == "StatusCode.DEADLINE_EXCEEDED"
        assert sdk.classify(noise(2.0)).label  # the default deadline still applies afterwards
    with EmotionClient(url, timeout_s=1e-4) as impatient, pytest.raises(RequestTimeoutError):
        impatient.classify(noise(2.0))  # the client's default deadline, whichever call hits it first


def test_a_down_server_is_unavailable_after_retries(dead_url: str, caplog: pytest.LogCaptureFixture) -> None:
    sdk = EmotionClient(dead_url, retry=FAST_RETRY)
    with caplog.at_level(logging.INFO, logger="emotion_client"), pytest.raises(ServerUnavailableError) as caught:
        sdk.classify(noise(1.0))
    assert dead_url in str(caught.value)
    assert isinstance(caught.value.__cause__, InferenceServerException)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == FAST_RETRY.max_retries


def test_retries_off_means_one_attempt(dead_url: str, caplog: pytest.LogCaptureFixture) -> None:
    sdk = EmotionClient(dead_url, retry=RetryPolicy(max_retries=0))
    with caplog.at_level(logging.INFO, logger="emotion_client"), pytest.raises(ServerUnavailableError):
        sdk.model_info()
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_wrong_model_names_are_typed(url: str) -> None:
    with EmotionClient(url, model_name="no-such-model") as sdk:
        with pytest.raises(UnknownModelError, match="no-such-model"):
            sdk.classify(noise(1.0))
        assert sdk.is_ready() is False
    with EmotionClient(url, model_name="classifier") as sdk, pytest.raises(IncompatibleModelError, match="classifier"):
        sdk.model_info()  # a real model, but not an emotion ensemble


def test_is_ready_and_health_never_raise(client: EmotionClient, url: str, dead_url: str) -> None:
    assert client.is_ready() is True
    (entry,) = client.health()
    assert (entry.url, entry.live, entry.ready, entry.error) == (url, True, True, None)
    with EmotionClient(dead_url) as down:
        assert down.is_ready() is False
        (entry,) = down.health()
        assert entry.live is False and dead_url in (entry.error or "")
        with pytest.raises(ServerUnavailableError, match=r"not ready after 0\.3 s"):
            down.wait_until_ready(0.3)


def test_context_manager_closes_and_closed_client_refuses(url: str) -> None:
    with EmotionClient(url) as sdk:
        assert sdk.is_ready()
    assert sdk.is_ready() is False
    sdk.close()  # idempotent
    with pytest.raises(EmotionClientError, match="closed"):
        sdk.classify(noise(1.0))
    with pytest.raises(EmotionClientError, match="closed"):
        sdk.model_info()


def test_one_client_is_safe_to_share_between_threads(client: EmotionClient) -> None:
    clips = [noise(0.3 + 0.1 * i, seed=i) for i in range(6)]
    expected = [client.classify(clip) for clip in clips]
    barrier = threading.Barrier(6)

    def worker(offset: int) -> list[Classification]:
        barrier.wait()
        order = clips[offset:] + clips[:offset]
        results = [client.classify(clip) for clip in order]
        return results[-offset:] + results[:-offset] if offset else results

    with ThreadPoolExecutor(6) as pool:
        per_thread = list(pool.map(worker, range(6)))
    for results in per_thread:
        for got, want in zip(results, expected, strict=True):
            assert got.label == want.label
            assert scores_by_label(got) == pytest.approx(scores_by_label(want), abs=1e-5)


# --- a server whose model comes and goes (explicit model control) ---------------------------------


@pytest.fixture(scope="module")
def controlled(tiny_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(tiny_repository, extra_args=["--model-control-mode=explicit", "--load-model=*"]) as server:
        yield server


def test_one_connection_is_reused_by_every_call_and_thread(controlled: TritonServer) -> None:
    # A server no other client in this process has used: gRPC shares connections between channels
    # with equal settings, so on the session server another test's client could own the socket.
    url, port = controlled.endpoints.grpc_url, controlled.endpoints.grpc_port
    others = tcp_connections_to(port)
    assert others == 0
    with EmotionClient(url) as sdk:
        assert tcp_connections_to(port) == others  # channels connect lazily
        for seed in range(5):
            sdk.classify(noise(0.5, seed=seed))
        items = sdk.classify_many([noise(0.5, seed=s) for s in range(8)], concurrency=4)
        assert all(item.ok for item in items)
        assert tcp_connections_to(port) == others + 1
    deadline = time.monotonic() + 5
    while tcp_connections_to(port) > others and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tcp_connections_to(port) == others  # close() released it


def test_wait_until_ready_follows_the_model_loading(controlled: TritonServer) -> None:
    url = controlled.endpoints.grpc_url
    admin = grpcclient.InferenceServerClient(url)
    with EmotionClient(url, retry=FAST_RETRY) as sdk:
        sdk.wait_until_ready(10)
        admin.unload_model("emotion")
        try:
            with pytest.raises(ModelNotReadyError, match=r"not ready after 0\.5 s"):
                sdk.wait_until_ready(0.5)
            with pytest.raises(ModelNotReadyError, match="no available versions"):
                sdk.classify(noise(1.0))
            (entry,) = sdk.health()
            assert entry.live is True and entry.ready is False
            loader = threading.Timer(0.5, admin.load_model, args=("emotion",))
            loader.start()
            sdk.wait_until_ready(60)
            loader.join()
        finally:
            admin.load_model("emotion")
        assert sdk.is_ready() is True
        assert sdk.classify(noise(1.0)).label in sdk.model_info().labels


def test_retries_ride_out_a_server_that_is_still_starting(
    tiny_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    patient = RetryPolicy(max_retries=200, backoff_base_s=0.2, backoff_max_s=0.2)
    outcome: list[Classification | BaseException] = []
    with (
        caplog.at_level(logging.INFO, logger="emotion_client"),
        EmotionClient(f"127.0.0.1:{port}", retry=patient) as sdk,
    ):

        def call() -> None:
            try:
                outcome.append(sdk.classify(noise(1.0)))
            except BaseException as e:  # handed to the main thread's assertion
                outcome.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while not any("retrying" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
        with TritonServer(tiny_repository, grpc_port=port):
            caller.join(timeout=120)
    assert len(outcome) == 1 and isinstance(outcome[0], Classification), outcome
    assert any("retrying" in r.getMessage() for r in caplog.records)
