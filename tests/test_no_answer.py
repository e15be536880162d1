"""One no-answer contract on every runtime: a clip the model computes NaN or infinity for reaches no
caller as a classification. The SDK (sync, async, classify_many, timeline, embed, evaluate, the CLI)
raises NoAnswerError for it, and the clips batched with it keep their answers.

The model under test is the served guard around a test-only module that answers every clip by its
length and loudness, and computes NaN for clips whose length ends in 777 samples (mod 1000): the
real classifier only does so on a GPU's fp16 overflow or on samples no arithmetic can hold.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import torch
from conftest import TEST_BATCHING
from repositories import export_repository
from triton_probes import RUNTIMES, raw_client, tensor
from tritonclient.utils import InferenceServerException

from emotion_build.model.served_classifier import serve_form, strip_source_paths
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer
from emotion_build.triton_models.waveform import normalise
from emotion_client import AsyncEmotionClient, EmotionClient, NoAnswerError

RATE = 16000
POISON = 777
"""Clips of n samples with n % 1000 == POISON get NaN from the model."""
TARGETS = {"python": "cpu", "libtorch": "gpu"}


class PoisonedModel(torch.nn.Module):
    """A ragged classifier's interface (flat clips and their ends -> logits, probabilities, embedding)."""

    def forward(self, waveform: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ends = ends.long()
        starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1]])
        lengths = (ends - starts).double()
        loudness = torch.cat([torch.zeros(1, dtype=torch.float64), waveform.abs().double().cumsum(0)])
        mean_abs = (loudness[ends] - loudness[starts]) / lengths
        seconds = lengths / RATE
        logits = torch.stack([seconds, -seconds, mean_abs * 3, torch.sin(seconds * 7)], dim=1).float()
        poisoned = ((ends - starts) % 1000 == POISON).unsqueeze(1)
        logits = torch.where(poisoned, torch.full_like(logits, float("nan")), logits)
        embedding = torch.cat([logits, logits * 2, logits * 3, logits * 4], dim=1)
        return logits, torch.softmax(logits, dim=1), embedding


def poisoned_module() -> torch.jit.ScriptModule:
    flat = torch.randn(RATE + 8000)
    traced = torch.jit.trace(PoisonedModel(), (flat, torch.tensor([RATE, RATE + 8000], dtype=torch.int32)))  # type: ignore[no-untyped-call]
    config = SimpleNamespace(conv_kernel=[400], conv_stride=[320], num_labels=4, classifier_proj_size=16)
    return serve_form(traced, config, max_samples=30 * RATE)


def expected_probabilities(clip: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    normalised = torch.from_numpy(normalise(clip, do_normalize=True))
    _, probabilities, _ = PoisonedModel()(normalised, torch.tensor([clip.size], dtype=torch.int32))
    row: npt.NDArray[np.float32] = probabilities[0].detach().numpy()
    return row


@dataclasses.dataclass(frozen=True)
class Served:
    runtime: str
    url: str
    labels: tuple[str, ...]


@pytest.fixture(scope="module", params=RUNTIMES)
def poisoned(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The tiny model's repository of each runtime, batching as the shared test servers do, with the
    poisoned module as its classifier."""
    runtime = request.param
    extra = ("--classifier-on-cpu",) if runtime == "libtorch" else ()
    output = tmp_path_factory.mktemp(f"poisoned-{runtime}") / "model_repository"
    repository = export_repository(tiny_model_dir, output, TARGETS[runtime], *extra, *TEST_BATCHING)
    artifact = repository / "classifier" / "1" / "model.pt"
    poisoned_module().save(str(artifact))
    strip_source_paths(artifact)
    install = None
    if runtime == "libtorch":
        install = find_tritonserver(extra_backends=request.getfixturevalue("libtorch_backends"))
    with TritonServer(repository, install=install) as server:
        labels = tuple((repository / "emotion" / "labels.txt").read_text().split())
        yield Served(runtime, server.endpoints.grpc_url, labels)


def speech(samples: int, seed: int) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


GOOD = [speech(RATE + 123 * k, seed=k) for k in range(5)]
BAD = speech(RATE + POISON, seed=9)


def scores(result: Any, labels: tuple[str, ...]) -> npt.NDArray[np.float32]:
    by_label = {entry.label: entry.score for entry in result.scores}
    return np.array([by_label[label] for label in labels], dtype=np.float32)


def test_each_runtime_marks_the_clip_it_cannot_answer_and_only_that_one(poisoned: Served) -> None:
    """What a raw tritonclient caller sees: the runner refuses the clip, the libtorch classifier gives
    its all-zero row (it can only fail whole batches), and neither is a row whose probabilities sum to 1."""
    if poisoned.runtime == "python":
        with pytest.raises(InferenceServerException, match="has no answer for this clip") as refused:
            raw_client(poisoned.url).infer("emotion", [tensor(BAD[None, :])], client_timeout=60)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    else:
        response = raw_client(poisoned.url).infer("emotion", [tensor(BAD[None, :])], client_timeout=60)
        assert not response.as_numpy("probabilities").any()


def test_the_sdk_raises_no_answer_and_the_batch_mates_keep_theirs(poisoned: Served) -> None:
    inputs = [*GOOD[:2], BAD, *GOOD[2:], BAD]
    with EmotionClient(poisoned.url, timeout_s=60) as client:
        with pytest.raises(NoAnswerError, match="no answer for this clip"):
            client.classify(BAD, RATE)
        with pytest.raises(NoAnswerError):
            client.embed(BAD, RATE)
        assert client.embed(GOOD[0], RATE).shape == (16,)
        items = client.classify_many(inputs, RATE, concurrency=len(inputs))
    for source, item in zip(inputs, items, strict=True):
        if source is BAD:
            assert isinstance(item.error, NoAnswerError), item
        else:
            assert item.result is not None, item.error
            np.testing.assert_allclose(scores(item.result, poisoned.labels), expected_probabilities(source), atol=1e-5)


def test_the_async_client_and_the_timeline_raise_it_too(poisoned: Served) -> None:
    async def both() -> tuple[Any, Any]:
        async with AsyncEmotionClient(poisoned.url, timeout_s=60) as client:
            good, bad = await asyncio.gather(
                client.classify(GOOD[0], RATE), client.classify(BAD, RATE), return_exceptions=True
            )
            return good, bad

    good, bad = asyncio.run(both())
    assert isinstance(bad, NoAnswerError)
    np.testing.assert_allclose(scores(good, poisoned.labels), expected_probabilities(GOOD[0]), atol=1e-5)
    window_s = (RATE + POISON) / RATE  # every window has the poisoned length
    with EmotionClient(poisoned.url, timeout_s=60) as client, pytest.raises(NoAnswerError):
        client.classify_timeline(speech(4 * RATE, seed=3), RATE, window_s=window_s, hop_s=0.5)


def test_the_cli_reports_the_clip_without_an_answer(poisoned: Served, tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.wav", tmp_path / "good.wav"
    soundfile.write(bad, BAD, RATE, subtype="FLOAT")
    soundfile.write(good, GOOD[1], RATE, subtype="FLOAT")
    classify = subprocess.run(
        [sys.executable, "-m", "emotion_client", "classify", str(bad), str(good), "--json", "--url", poisoned.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert classify.returncode == 1, classify.stderr
    rows = {Path(row["path"]).name: row for row in map(json.loads, classify.stdout.splitlines())}
    assert rows["bad.wav"]["error"]["type"] == "NoAnswerError" and "label" not in rows["bad.wav"]
    assert rows["good.wav"]["label"] in poisoned.labels
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,label\n{bad},{poisoned.labels[0]}\n{good},{poisoned.labels[0]}\n")
    evaluate = subprocess.run(
        [sys.executable, "-m", "emotion_client", "evaluate", "--manifest", str(manifest), "--url", poisoned.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert evaluate.returncode == 1
    assert "1 clip(s) failed" in evaluate.stdout and "no answer for this clip" in evaluate.stdout
