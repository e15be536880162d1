"""Ragged dynamic batching through the real server: batches really form, and answers do not move.

Clips of 0.3 s to 15 s are sent first one at a time (each runs alone), then all at once from many
threads so Triton batches them with neighbours of other lengths; every clip must get the same
probabilities both ways.
"""

from __future__ import annotations

import numpy as np
import pytest
from precision_bands import bands_of
from triton_probes import alone_then_together

from emotion_build.server.launcher import TritonServer

SAMPLE_RATE = 16000
CONCURRENCY = 8  # the test repository's max_batch_size (tests/conftest.py)


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_lengths_batch_together_without_changing_any_answer(
    served: TritonServer, seed: int, request: pytest.FixtureRequest
) -> None:
    """Through either classifier runtime: the Python runner and the production libtorch backend."""
    url = served.endpoints.grpc_url
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(0.3 * SAMPLE_RATE), 15 * SAMPLE_RATE, size=4 * CONCURRENCY)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in lengths]

    alone, drift, change = alone_then_together(url, clips, CONCURRENCY)
    band = bands_of(served.model_repository).batched
    inferences, executions = change.inferences, change.executions
    average_batch = inferences / executions
    print(
        f"{request.node.callspec.id}: {len(clips)} clips "
        f"{lengths.min() / SAMPLE_RATE:.1f}-{lengths.max() / SAMPLE_RATE:.1f} s, "
        f"max |Δprob| alone vs batched {drift:.2e} (band {band:.1e}), average executed batch {average_batch:.2f}"
    )
    assert inferences == len(clips)
    assert average_batch >= 4, f"only {average_batch:.2f} requests per classifier execution"
    assert drift <= band
    assert np.abs(alone - alone[0]).max() > 1e-3  # the model really tells clips apart
