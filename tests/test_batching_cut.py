"""The cpu target's preferred batch size through the real server: requests that queue up while
the instance is busy run in batches of at most the cut, where without it they merge up to the
max batch size (8 in a burst like this one) and the other instance would be left single clips."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from repositories import export_cpu_repository
from triton_probes import clip, counts_after, infer, raw_client, settled_counts

from emotion_build.repository.description import BatchingSettings
from emotion_build.server.launcher import TritonServer

DEFAULTS = BatchingSettings.for_target("cpu")
REQUESTS = 12


@pytest.fixture(scope="module")
def one_instance_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The cpu defaults (no queue delay, the cut) with one instance, so that a burst queues behind
    the first request instead of spreading over instances."""
    repository = export_cpu_repository(
        tiny_model_dir, tmp_path_factory.mktemp("cut") / "model_repository", "--classifier-instances", "1"
    )
    with TritonServer(repository) as server:
        yield server


def batch_sizes(url: str) -> dict[int, int]:
    """Executions per batch size of the classifier so far, from Triton's statistics."""
    (entry,) = raw_client(url).get_inference_statistics("classifier", as_json=True)["model_stats"]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in entry.get("batch_stats", [])}


def test_a_burst_runs_in_batches_cut_at_the_preferred_size(one_instance_server: TritonServer) -> None:
    url = one_instance_server.endpoints.grpc_url
    assert DEFAULTS.max_batch_size > DEFAULTS.preferred_batch_size > 1  # otherwise there is nothing to cut
    assert DEFAULTS.max_queue_delay_us == 0  # with a delay Triton lets a waiting batch grow past the cut
    # 10 s clips keep the instance busy long enough for the rest of the burst to queue behind it.
    clips = [clip(10.0, seed=seed) for seed in range(REQUESTS)]

    before, sizes_before = settled_counts(url, "classifier"), batch_sizes(url)
    with ThreadPoolExecutor(REQUESTS) as pool:
        list(pool.map(lambda c: infer(url, c), clips))
    counts_after(url, "classifier", before, successes=REQUESTS)
    burst = {size: n - sizes_before.get(size, 0) for size, n in batch_sizes(url).items()}
    burst = {size: n for size, n in burst.items() if n}
    print(f"{REQUESTS} concurrent requests ran as batches {burst}")
    assert sum(size * n for size, n in burst.items()) == REQUESTS
    assert max(burst) == DEFAULTS.preferred_batch_size
