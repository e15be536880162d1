"""EmotionClient against a stand-in for tritonclient's gRPC client: I/O wiring, caching and the
error boundary, without a Triton server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from tritonclient.utils import InferenceServerException

from emotion_client import (
    EmotionClient,
    EmotionClientError,
    InvalidAudioError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
)


def make_config(*, untrained: str = "false") -> dict[str, Any]:
    """A ``get_model_config(..., as_json=True)`` response shaped like Triton's."""
    params = {
        "labels": '["neu", "hap", "ang", "sad"]',
        "sample_rate": "16000",
        "audio_input": "AUDIO",
        "probabilities_output": "PROBABILITIES",
        "logits_output": "LOGITS",
        "min_duration_s": "0.5",
        "max_duration_s": "30",
        "untrained": untrained,
    }
    return {"config": {"name": "emotion", "parameters": {k: {"string_value": v} for k, v in params.items()}}}


class FakeResult:
    def __init__(self, outputs: dict[str, npt.NDArray[np.float32]]) -> None:
        self._outputs = outputs

    def as_numpy(self, name: str) -> npt.NDArray[np.float32] | None:
        return self._outputs.get(name)


class FakeTriton:
    """Records calls and answers like ``tritonclient.grpc.InferenceServerClient``."""

    def __init__(self, url: str, ssl: bool = False, verbose: bool = False) -> None:
        self.url = url
        self.config: dict[str, Any] = make_config()
        self.probabilities = np.array([[0.1, 0.7, 0.15, 0.05]], dtype=np.float32)
        self.infer_error: InferenceServerException | None = None
        self.live = True
        self.config_calls = 0
        self.infer_calls: list[dict[str, Any]] = []
        self.closed = 0

    def get_model_config(self, model_name: str, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["as_json"] is True
        self.config_calls += 1
        return self.config

    def infer(self, model_name: str, inputs: list[Any], **kwargs: Any) -> FakeResult:
        self.infer_calls.append({"model_name": model_name, "inputs": inputs, **kwargs})
        if self.infer_error is not None:
            raise self.infer_error
        return FakeResult({"PROBABILITIES": self.probabilities})

    def is_server_live(self, **kwargs: Any) -> bool:
        if not self.live:
            raise InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")
        return True

    def is_model_ready(self, model_name: str, **kwargs: Any) -> bool:
        if not self.live:
            raise InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")
        return model_name == "emotion"

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> list[FakeTriton]:
    made: list[FakeTriton] = []

    def factory(**kwargs: Any) -> FakeTriton:
        made.append(FakeTriton(**kwargs))
        return made[-1]

    monkeypatch.setattr("emotion_client.client.grpcclient.InferenceServerClient", factory)
    return made


def test_classify_array_sends_one_clip_and_decodes(fake: list[FakeTriton]) -> None:
    with EmotionClient("triton:8001", timeout_s=5.0) as client:
        result = client.classify(np.zeros(8000, dtype=np.int16), 8000, top_k=2)
    triton = fake[0]
    assert triton.url == "triton:8001"
    assert [(s.label, round(s.score, 2)) for s in result.scores] == [("hap", 0.7), ("ang", 0.15)]
    assert result.untrained is False
    (call,) = triton.infer_calls
    assert call["client_timeout"] == 5.0
    assert call["inputs"][0].shape() == [1, 16000]  # 1 s at 8 kHz resampled to the model's 16 kHz
    assert [o.name() for o in call["outputs"]] == ["PROBABILITIES"]
    assert triton.closed == 1


def test_classify_file_and_per_call_timeout(fake: list[FakeTriton], tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.zeros(22050), 22050, subtype="PCM_16")
    client = EmotionClient()
    client.classify(path, sample_rate=1234, timeout_s=0.5)  # file's own rate, not 1234
    call = fake[0].infer_calls[0]
    assert call["client_timeout"] == 0.5
    assert call["inputs"][0].shape() == [1, 16000]


def test_model_info_is_fetched_once_and_untrained_propagates(fake: list[FakeTriton]) -> None:
    client = EmotionClient()
    fake[0].config = make_config(untrained="true")
    first = client.model_info()
    client.classify(np.zeros(16000, dtype=np.float32))
    result = client.classify(np.zeros(16000, dtype=np.float32))
    assert client.model_info() is first
    assert fake[0].config_calls == 1
    assert result.untrained is True


def test_too_short_audio_fails_before_sending(fake: list[FakeTriton]) -> None:
    client = EmotionClient()
    with pytest.raises(InvalidAudioError, match="min_duration_s"):
        client.classify(np.zeros(100, dtype=np.float32))
    assert fake[0].infer_calls == []


def test_timeout_is_mapped_with_cause(fake: list[FakeTriton]) -> None:
    client = EmotionClient()
    original = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    fake[0].infer_error = original
    with pytest.raises(RequestTimeoutError) as excinfo:
        client.classify(np.zeros(16000, dtype=np.float32))
    assert excinfo.value.__cause__ is original


@pytest.mark.parametrize(("live", "expected"), [(True, ModelNotReadyError), (False, ServerUnavailableError)])
def test_unavailable_is_split_by_liveness(
    fake: list[FakeTriton], live: bool, expected: type[EmotionClientError]
) -> None:
    client = EmotionClient()
    client.model_info()
    fake[0].live = live
    fake[0].infer_error = InferenceServerException("unavailable", status="StatusCode.UNAVAILABLE")
    with pytest.raises(expected):
        client.classify(np.zeros(16000, dtype=np.float32))


def test_is_ready_never_raises(fake: list[FakeTriton]) -> None:
    assert EmotionClient().is_ready() is True
    assert EmotionClient(model_name="other").is_ready() is False
    down = EmotionClient()
    fake[-1].live = False
    assert down.is_ready() is False


def test_closed_client_refuses_calls(fake: list[FakeTriton]) -> None:
    client = EmotionClient()
    client.close()
    client.close()
    assert fake[0].closed == 1
    assert client.is_ready() is False
    with pytest.raises(EmotionClientError, match="closed"):
        client.classify(np.zeros(16000, dtype=np.float32))


@pytest.mark.parametrize("kwargs", [{"top_k": 0}, {"timeout_s": 0.0}])
def test_bad_options_fail_before_any_request(fake: list[FakeTriton], kwargs: dict[str, Any]) -> None:
    client = EmotionClient()
    with pytest.raises(ValueError):
        client.classify(np.zeros(16000, dtype=np.float32), **kwargs)
    assert fake[0].config_calls == 0
