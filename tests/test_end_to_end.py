"""HF model -> export -> real tritonserver -> SDK, compared with the eager model on real speech."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
import torch
import tritonclient.grpc as grpcclient
from precision_bands import bands_of
from speech import espeak_clip
from tritonclient.utils import InferenceServerException

from emotion_build.server.launcher import TritonServer
from emotion_client import Classification, EmotionClient
from emotion_client.audio import load_audio

DURATIONS_S = (0.5, 1.3, 3.0, 6.2, 10.0)


def eager_probabilities(hf_classifier: tuple[Any, Any], audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    model, extractor = hf_classifier
    inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(model(inputs.input_values).logits, dim=-1)[0].numpy()


def in_label_order(result: Classification, labels: tuple[str, ...]) -> npt.NDArray[np.float32]:
    by_label = {entry.label: entry.score for entry in result.scores}
    return np.array([by_label[label] for label in labels])


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("speech")
    for index, seconds in enumerate(DURATIONS_S):
        espeak_clip(directory, seconds, index=index)
    return directory


def test_labels_and_settings_come_from_the_server(served_client: EmotionClient, hf_classifier: tuple[Any, Any]) -> None:
    model, _ = hf_classifier
    info = served_client.model_info()
    assert info.labels == tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    assert info.sample_rate == 16000
    assert info.untrained is False


@pytest.mark.parametrize("index", range(len(DURATIONS_S)))
def test_speech_files_match_the_eager_model(
    served: TritonServer,
    served_client: EmotionClient,
    hf_classifier: tuple[Any, Any],
    speech_dir: Path,
    index: int,
    request: pytest.FixtureRequest,
) -> None:
    """Through either classifier runtime (the Python runner and the production libtorch backend) in
    fp32, and the default export within its own gate's limit."""
    client = served_client
    band = bands_of(served.model_repository).vs_eager
    (path,) = speech_dir.glob(f"speech-{index}-*.wav")
    assert soundfile.info(path).samplerate == 22050  # the SDK must resample
    result = client.classify(path)
    audio = load_audio(path, sample_rate=None, target_rate=16000)
    expected = eager_probabilities(hf_classifier, audio)
    got = in_label_order(result, client.model_info().labels)
    drift = float(np.abs(got - expected).max())
    print(f"{request.node.callspec.id} {path.name}: max |Δprob| served vs eager = {drift:.2e} (band {band:g})")
    assert drift <= band
    best, second = np.sort(expected)[::-1][:2]
    if best - second > band:  # within the band of a tie, the label may go either way
        assert result.label == client.model_info().labels[int(np.argmax(expected))]
    assert [s.score for s in result.scores] == sorted((s.score for s in result.scores), reverse=True)
    assert result.score == result.scores[0].score


def test_arrays_at_other_rates_and_top_k(
    client: EmotionClient, hf_classifier: tuple[Any, Any], speech_dir: Path
) -> None:
    (path,) = speech_dir.glob("speech-2-*.wav")
    audio, rate = soundfile.read(path, dtype="float32")
    served = client.classify(audio, sample_rate=rate, top_k=2)
    assert len(served.scores) == 2
    expected = eager_probabilities(hf_classifier, load_audio(audio, sample_rate=rate, target_rate=16000))
    assert served.label == client.model_info().labels[int(np.argmax(expected))]
    assert abs(served.score - float(expected.max())) <= 1e-4


def test_classification_extension_returns_labels_from_the_ensemble(triton: TritonServer, client: EmotionClient) -> None:
    raw = grpcclient.InferenceServerClient(triton.endpoints.grpc_url)
    audio = (0.1 * np.random.default_rng(0).standard_normal((1, 16000))).astype(np.float32)
    request = grpcclient.InferInput("audio", list(audio.shape), "FP32")
    request.set_data_from_numpy(audio)
    response = raw.infer(
        "emotion", [request], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=4)]
    )
    entries = [item.decode().split(":") for item in response.as_numpy("probabilities")[0]]
    assert [label for _, _, label in entries] == [client.model_info().labels[int(index)] for _, index, _ in entries]
    assert sorted(label for _, _, label in entries) == sorted(client.model_info().labels)


def test_a_bad_request_is_refused_clearly_and_the_server_keeps_serving(
    triton: TritonServer, client: EmotionClient
) -> None:
    raw = grpcclient.InferenceServerClient(triton.endpoints.grpc_url)
    short = np.zeros((1, 100), np.float32)
    request = grpcclient.InferInput("audio", list(short.shape), "FP32")
    request.set_data_from_numpy(short)
    with pytest.raises(InferenceServerException) as caught:
        raw.infer("emotion", [request])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "too short" in caught.value.message() and "minimum is 0.100 s" in caught.value.message()
    good = client.classify(np.sin(np.linspace(0, 2000, 16000)).astype(np.float32))
    assert abs(sum(s.score for s in good.scores) - 1.0) < 1e-5
