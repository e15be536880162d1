"""Shared fixtures: a tiny random wav2vec2 classifier saved the Hugging Face way, its exported
repository, and a real tritonserver serving it. Built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from repositories import export_cpu_repository, export_repository
from speech import espeak_clips
from triton_probes import SERVED

from emotion_build.model.loading import LoadedModel, random_model
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer
from emotion_client import EmotionClient

pytest_plugins = ["deploy_files"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SOAK_SECONDS_ENV = "EMOTION_SOAK_SECONDS"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=float(os.environ.get(SOAK_SECONDS_ENV, "60")),
        help=f"length of the soak test's load (default 60, or ${SOAK_SECONDS_ENV})",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The hardening tests' closing table (tests/triton_probes.py), after every run that produced rows."""
    from triton_probes import REPORT, report_table

    if REPORT:
        terminalreporter.section("hardening report")
        terminalreporter.write_line(report_table())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint directory like a hub download, so the export runs the real loading code."""
    from emotion_build.model.loading import random_model

    loaded = random_model("tiny", seed=3)
    directory = tmp_path_factory.mktemp("tiny-model")
    loaded.model.save_pretrained(directory)
    loaded.feature_extractor.save_pretrained(directory)
    return directory


TEST_BATCHING = (
    # Batches fill to CONCURRENCY (8), with no preferred size to cut them at, or wait up to 100 ms
    # for it, so test_batching can show that mixed lengths batch even on a loaded two-core machine.
    "--max-batch-size",
    "8",
    "--preferred-batch-size",
    "0",
    "--max-queue-delay-us",
    "100000",
    "--intra-op-threads",
    "1",
    # One classifier instance, so that the batches test_batching counts all form in one place.
    "--classifier-instances",
    "1",
)
"""The export options of both test repositories: the same batching behind either classifier runtime."""


@pytest.fixture(scope="session")
def tiny_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_cpu_repository(tiny_model_dir, tmp_path_factory.mktemp("repo") / "model_repository", *TEST_BATCHING)


@pytest.fixture(scope="session")
def libtorch_backends() -> Path:
    """The libtorch backend `make test` builds into this environment (make libtorch-backend)."""
    from emotion_build.server.libtorch_backend import BackendBuildError, check_backend, default_backends_dir

    try:
        check_backend(default_backends_dir())
    except BackendBuildError as error:
        pytest.fail(str(error))
    return default_backends_dir()


@pytest.fixture(scope="session")
def libtorch_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The production target's repository (libtorch classifier) of the same model, on this CPU."""
    output = tmp_path_factory.mktemp("libtorch-repo") / "model_repository"
    return export_repository(tiny_model_dir, output, "gpu", "--classifier-on-cpu", *TEST_BATCHING)


@pytest.fixture(scope="session")
def libtorch_triton(libtorch_repository: Path, libtorch_backends: Path) -> Iterator[TritonServer]:
    with TritonServer(libtorch_repository, install=find_tritonserver(extra_backends=libtorch_backends)) as server:
        yield server


@pytest.fixture(scope="session")
def auto_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What users get: the default export (`--dtype auto`) of the same model, with the same batching."""
    output = tmp_path_factory.mktemp("auto-repo") / "model_repository"
    return export_cpu_repository(tiny_model_dir, output, "--dtype", "auto", "--engine", "auto", *TEST_BATCHING)


@pytest.fixture(scope="session")
def auto_triton(auto_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(auto_repository) as server:
        yield server


SERVED_FIXTURES = {"python": "triton", "libtorch": "libtorch_triton", "python-auto": "auto_triton"}


@pytest.fixture(scope="session", params=SERVED)
def served(request: pytest.FixtureRequest) -> TritonServer:
    """The shared servers, same model and batching: the cpu target's Python runner (`triton`), the
    production gpu target's libtorch backend on KIND_CPU (`libtorch_triton`), both fp32, and the
    runner on the default export (`auto_triton`), whose answers are judged within its own gate's bands."""
    server: TritonServer = request.getfixturevalue(SERVED_FIXTURES[request.param])
    return server


@pytest.fixture(scope="session")
def hf_classifier(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The eager Hugging Face model and feature extractor every served answer is compared with."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    model = Wav2Vec2ForSequenceClassification.from_pretrained(tiny_model_dir)
    model.eval()  # type: ignore[no-untyped-call]
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(tiny_model_dir)
    return model, extractor


@pytest.fixture(scope="session")
def triton(tiny_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(tiny_repository) as server:
        yield server


@pytest.fixture(scope="session")
def url(triton: TritonServer) -> str:
    """The shared server's gRPC address, as SDK callers pass it."""
    return str(triton.endpoints.grpc_url)


@pytest.fixture(scope="module")
def served_client(served: TritonServer) -> Iterator[EmotionClient]:
    """An SDK client of `served`: one per module and runtime."""
    with EmotionClient(served.endpoints.grpc_url, timeout_s=60) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[EmotionClient]:
    """One SDK client per test module: its cached model info and channel are that module's own.
    test_hardening_client_input overrides it with a shorter timeout and the info fetched up front."""
    with EmotionClient(url, timeout_s=60) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    """A tiny random classifier in memory, for tests that call `export` directly."""
    return random_model("tiny", seed=5)


@pytest.fixture(scope="session")
def speech_clips(tmp_path_factory: pytest.TempPathFactory) -> list[npt.NDArray[np.float32]]:
    """Five espeak-ng clips of 0.6-7.5 s at 16 kHz."""
    return espeak_clips(tmp_path_factory.mktemp("speech"), (0.6, 1.3, 2.7, 4.0, 7.5), sample_rate=16000)


@pytest.fixture(scope="session")
def few_clips(speech_clips: list[npt.NDArray[np.float32]]) -> tuple[list[npt.NDArray[np.float32]], str]:
    """speech_clips as `export`'s gate_speech: a precision gate that runs in seconds."""
    return speech_clips, "five espeak-ng clips"
