"""Several endpoints: two real tritonserver processes on the same repository. Each server's own
inference statistics show that requests were spread round-robin, and a replica that goes away
costs one retry, not failed requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient

from emotion_build.server.launcher import TritonServer
from emotion_client import AsyncEmotionClient, EmotionClient, RetryPolicy, ServerUnavailableError
from emotion_client._defaults import ENDPOINT_COOLDOWN_S
from emotion_client.cli import main


def noise(seconds: float, seed: int) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))).astype(np.float32)


def served(server: TritonServer) -> int:
    """Successful ensemble inferences according to the server itself."""
    with grpcclient.InferenceServerClient(server.endpoints.grpc_url) as admin:
        (entry,) = admin.get_inference_statistics("emotion", as_json=True)["model_stats"]
    return int(entry["inference_stats"]["success"].get("count", 0))


@pytest.fixture(scope="module")
def replicas(tiny_repository: Path) -> Iterator[tuple[TritonServer, TritonServer]]:
    servers = (TritonServer(tiny_repository), TritonServer(tiny_repository))
    with ThreadPoolExecutor(2) as pool:  # start and stop both at once: each takes seconds
        list(pool.map(lambda s: s.start(), servers))
        try:
            yield servers
        finally:
            list(pool.map(lambda s: s.stop(), servers))


def deltas(replicas: tuple[TritonServer, TritonServer], before: list[int]) -> list[int]:
    return [served(s) - b for s, b in zip(replicas, before, strict=True)]


def test_sequential_calls_alternate_between_replicas(replicas: tuple[TritonServer, TritonServer]) -> None:
    before = [served(s) for s in replicas]
    urls = [s.endpoints.grpc_url for s in replicas]
    with EmotionClient(urls) as client:
        assert client.urls == tuple(urls)
        labels = {client.classify(noise(0.5, seed)).label for seed in range(10)}
        assert labels <= set(client.model_info().labels)
    assert deltas(replicas, before) == [5, 5]


def test_a_comma_list_and_the_async_client_spread_too(replicas: tuple[TritonServer, TritonServer]) -> None:
    before = [served(s) for s in replicas]
    urls = ",".join(s.endpoints.grpc_url for s in replicas)

    async def run() -> int:
        async with AsyncEmotionClient(urls) as client:
            items = await client.classify_many([noise(0.4, seed) for seed in range(12)], concurrency=4)
            return sum(item.ok for item in items)

    assert asyncio.run(run()) == 12
    assert deltas(replicas, before) == [6, 6]


def test_threads_sharing_one_client_reach_both_replicas(replicas: tuple[TritonServer, TritonServer]) -> None:
    before = [served(s) for s in replicas]
    with EmotionClient([s.endpoints.grpc_url for s in replicas]) as client:
        items = client.classify_many([noise(0.4, seed) for seed in range(16)], concurrency=8)
    assert all(item.ok for item in items)
    assert deltas(replicas, before) == [8, 8]


def test_health_reports_every_replica(
    replicas: tuple[TritonServer, TritonServer], capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [s.endpoints.grpc_url for s in replicas]
    with EmotionClient(urls) as client:
        assert [(h.url, h.live, h.ready) for h in client.health()] == [(u, True, True) for u in urls]
        client.wait_until_ready(10)
    assert main(["health", "--url", urls[0], "--url", urls[1], "--json"]) == 0
    assert capsys.readouterr().out.count('"ready": true') == 2


def test_losing_a_replica_costs_one_retry_not_a_failure(
    replicas: tuple[TritonServer, TritonServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Runs last in this module: it stops the second replica."""
    first, second = replicas
    urls = [first.endpoints.grpc_url, second.endpoints.grpc_url]
    with EmotionClient(urls, retry=RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.01)) as client:
        assert {client.classify(noise(0.5, seed)).label for seed in range(2)}
        second.stop()
        before = served(first)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="emotion_client"):
            results = [client.classify(noise(0.5, seed)) for seed in range(10)]
        cooldowns = int((time.monotonic() - started) / ENDPOINT_COOLDOWN_S)
        assert len(results) == 10
        assert served(first) - before == 10
        retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert all(urls[1] in message for message in retries)
        # One retry, then the dead replica sits out its cooldown (plain round-robin would retry 5 times).
        assert 1 <= len(retries) <= 1 + cooldowns
        (_, down) = client.health()
        assert down.live is False
        assert client.is_ready() is False
        with pytest.raises(ServerUnavailableError, match=urls[1]):
            client.wait_until_ready(0.3)
