"""Several checkpoints in one repository, served by one tritonserver, called by name.

A wav2vec2 checkpoint (four labels) is exported as the default `emotion`, a WavLM one (seven labels)
with `--name wavlm` into the same directory; both are served together and called at once, by the SDK
and by the CLI, each against its own eager Hugging Face model. A name already taken is refused
before anything is loaded, and a name the server does not hold is a typed error that lists the
names it does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from conftest import TEST_BATCHING
from families import SEVEN_LABELS, VARIANTS, save_checkpoint
from repositories import export_cpu_repository
from transformers import AutoModelForAudioClassification, Wav2Vec2FeatureExtractor

from emotion_build.model.loading import SUPERB_LABELS
from emotion_build.server.launcher import TritonServer
from emotion_client import EmotionClient, UnknownModelError

RATE = 16000
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")


@pytest.fixture(scope="module")
def wavlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(VARIANTS["wavlm-base"], tmp_path_factory.mktemp("wavlm"))


@pytest.fixture(scope="module")
def shared_repository(tiny_model_dir: Path, wavlm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("several") / "model_repository"
    export_cpu_repository(tiny_model_dir, repository, *TEST_BATCHING)
    export_cpu_repository(wavlm_dir, repository, "--name", "wavlm", *TEST_BATCHING)
    return repository


@pytest.fixture(scope="module")
def server(shared_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(shared_repository) as running:
        yield running


def eager(directory: Path, clips: list[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
    model = AutoModelForAudioClassification.from_pretrained(directory).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    answers = []
    for clip in clips:
        inputs = extractor(clip, sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            answers.append(torch.softmax(model(**inputs).logits, dim=-1)[0].numpy())
    return answers


def test_the_repository_holds_both_models_each_with_its_own_four_parts(shared_repository: Path) -> None:
    names = {path.parent.name for path in shared_repository.glob("*/config.pbtxt")}
    assert names == {
        "emotion",
        "preprocess",
        "classifier",
        "stream",
        "wavlm",
        "wavlm_preprocess",
        "wavlm_classifier",
        "wavlm_stream",
    }
    assert (shared_repository / "wavlm" / "labels.txt").read_text().split() == list(SEVEN_LABELS)
    assert (shared_repository / "emotion" / "labels.txt").read_text().split() == list(SUPERB_LABELS)


def test_both_models_answer_at_once_as_their_own_eager_models(
    server: TritonServer,
    tiny_model_dir: Path,
    wavlm_dir: Path,
    speech_clips: list[npt.NDArray[np.float32]],
) -> None:
    url = server.endpoints.grpc_url
    expected = {"emotion": eager(tiny_model_dir, speech_clips), "wavlm": eager(wavlm_dir, speech_clips)}
    labels = {"emotion": SUPERB_LABELS, "wavlm": SEVEN_LABELS}

    def call(name: str) -> float:
        with EmotionClient(url, model_name=name, timeout_s=60) as client:
            assert client.model_info().labels == labels[name]
            worst = 0.0
            for _ in range(3):  # the two models' requests interleave on the server
                for clip, want in zip(speech_clips, expected[name], strict=True):
                    result = client.classify(clip, RATE)
                    got = np.array([dict((s.label, s.score) for s in result.scores)[label] for label in labels[name]])
                    worst = max(worst, float(np.abs(got - want).max()))
                    assert result.label == labels[name][int(want.argmax())]
            return worst

    with ThreadPoolExecutor(4) as pool:
        worst = dict(zip(["emotion", "wavlm"] * 2, pool.map(call, ["emotion", "wavlm"] * 2), strict=True))
    print(f"served vs eager HF, max |Δprob|: {worst}")
    assert max(worst.values()) <= 1e-4


def test_models_lists_every_served_model_in_the_sdk_and_the_cli(server: TritonServer) -> None:
    url = server.endpoints.grpc_url
    with EmotionClient(url) as client:
        models = {model.name: model for model in client.models()}
    assert set(models) == {"emotion", "wavlm"}
    assert models["wavlm"].info.labels == SEVEN_LABELS and models["wavlm"].info.family == "wavlm"
    assert models["emotion"].info.family == "wav2vec2" and models["emotion"].versions == (1,)
    listed = subprocess.run(
        [sys.executable, "-m", "emotion_client", "models", "--url", url, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["wavlm"]["labels"] == list(SEVEN_LABELS) and rows["emotion"]["versions"] == [1]
    table = subprocess.run(
        [sys.executable, "-m", "emotion_client", "models", "--url", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "wavlm" in table and " ".join(SEVEN_LABELS) in table


def test_the_cli_classifies_with_the_model_it_names(
    server: TritonServer, tmp_path: Path, speech_clips: list[npt.NDArray[np.float32]]
) -> None:
    import soundfile

    path = tmp_path / "clip.wav"
    soundfile.write(path, speech_clips[2], RATE)
    url = server.endpoints.grpc_url
    for name, labels in (("wavlm", SEVEN_LABELS), ("emotion", SUPERB_LABELS)):
        done = subprocess.run(
            [sys.executable, "-m", "emotion_client", "classify", str(path), "--url", url, "--model", name, "--json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        answer = json.loads(done.stdout.splitlines()[0])
        assert {entry["label"] for entry in answer["scores"]} == set(labels), answer


def test_a_name_the_server_does_not_hold_is_a_typed_error_naming_the_ones_it_does(
    server: TritonServer, speech_clips: list[npt.NDArray[np.float32]]
) -> None:
    url = server.endpoints.grpc_url
    with EmotionClient(url, model_name="wavlm2", timeout_s=30) as client, pytest.raises(UnknownModelError) as caught:
        client.classify(speech_clips[0], RATE)
    assert set(caught.value.available) == {"emotion", "wavlm"}
    assert "wavlm2" in str(caught.value) and "emotion" in str(caught.value)
    refused = subprocess.run(
        [sys.executable, "-m", "emotion_client", "labels", "--url", url, "--model", "wavlm2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "wavlm2" in refused.stderr and "wavlm" in refused.stderr.replace("wavlm2", "")
    assert "Traceback" not in refused.stderr


def refused(repository: Path, *arguments: str) -> str:
    """`export` into the shared repository with `arguments`: exit status 2, one line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "emotion_build", "export", *arguments, "--output", str(repository)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_export_refuses_a_clash_before_loading_anything_and_leaves_the_repository_alone(
    shared_repository: Path, wavlm_dir: Path
) -> None:
    before = {path: path.stat().st_mtime_ns for path in shared_repository.rglob("*")}
    options = ("--model", str(wavlm_dir), "--target", "cpu")
    line = refused(shared_repository, *options, "--name", "wavlm_classifier")
    assert "clashes with model 'wavlm'" in line and "--name" in line, line
    line = refused(shared_repository, *options, "--name", "preprocess")
    assert "clashes with model 'emotion'" in line and "'preprocess'" in line, line
    line = refused(shared_repository, *options, "--name", "wavlm", "--version", "1")
    assert "version 1 of model 'wavlm' already exists" in line and "--version next" in line, line
    line = refused(shared_repository, *options, "--name", "Bad/Name")
    assert "'Bad/Name'" in line and "letters, digits" in line, line
    assert {path: path.stat().st_mtime_ns for path in shared_repository.rglob("*")} == before
