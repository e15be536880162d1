"""The serving-overhead bench (benchmarks/serving_overhead.py): its model-less repository really
serves through the ensemble, and each server process is counted under what it does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serving_overhead import ROLES, constant_repository, cpu_by_role, install_for, role_of
from triton_probes import RUNTIMES, classifier_runtime, clip, infer, model_counts

from emotion_build.repository.description import BatchingSettings
from emotion_build.server.launcher import TritonServer


def test_processes_are_told_apart_by_the_model_their_stub_runs() -> None:
    stub = "triton_python_backend_stub /tmp/r/{}/1/model.py triton_python_backend_shm_region_1 1048576"
    assert role_of(stub.format("preprocess")) == "preprocess"
    assert role_of(stub.format("classifier")) == "classifier runner"
    server = "/venv/lib/python3.11/site-packages/pytriton/tritonserver/bin/tritonserver --model-repository=/r"
    assert role_of(server) == "server"
    assert role_of("python benchmarks/serving_overhead.py") is None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_constant_classifier_serves_through_the_real_ensemble(
    tmp_path: Path, runtime: str, request: pytest.FixtureRequest
) -> None:
    if runtime == "libtorch":
        request.getfixturevalue("libtorch_backends")  # built, and for this torch
    repository = constant_repository(tmp_path / "repository", BatchingSettings.for_target("gpu"), runtime)
    with TritonServer(repository, install=install_for(runtime)) as server:
        url = server.endpoints.grpc_url
        assert classifier_runtime(url) == runtime
        before = {model: model_counts(url, model) for model in ("preprocess", "classifier")}
        probabilities = infer(url, clip(1.0))
        # Constant zero logits: the answer carries no model, only the serving path.
        np.testing.assert_allclose(probabilities, np.full(4, 0.25, dtype=np.float32))
        for model, counts in before.items():  # (the classifier's warmup counts too, hence the difference)
            assert (model_counts(url, model) - counts).successes == 1, f"{model} did not serve the request"
        assert server.pid is not None
        seconds = cpu_by_role(server.pid)
    assert set(seconds) == set(ROLES)
    # Starting and loading took CPU in every process: a role at zero is a process not found. The
    # libtorch classifier has no process of its own: it runs in the server's.
    for role in ("server", "preprocess", "classifier runner"):
        assert (seconds[role] > 0.0) == (role != "classifier runner" or runtime == "python"), role
