"""Unit tests of the client codec and error mapping: no Triton server needed."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from emotion_client import (
    Classification,
    EmotionClientError,
    IncompatibleModelError,
    InvalidAudioError,
    LabelScore,
    ModelInfo,
    ModelNotReadyError,
    NoAnswerError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    TransportError,
    codec,
)
from emotion_client.errors import from_triton_error, is_ambiguous_unavailable

LABELS = ["neu", "hap", "ang", "sad"]


def make_config(**overrides: str) -> dict[str, Any]:
    """A ``get_model_config(..., as_json=True)`` response shaped like Triton's."""
    params = {
        "labels": json.dumps(LABELS),
        "sample_rate": "16000",
        "audio_input": "AUDIO",
        "probabilities_output": "PROBABILITIES",
        "logits_output": "LOGITS",
        "min_duration_s": "0.5",
        "max_duration_s": "30",
        "untrained": "false",
    }
    params.update(overrides)
    return {
        "config": {
            "name": "emotion",
            "platform": "ensemble",
            "input": [{"name": "AUDIO", "data_type": "TYPE_FP32", "dims": ["-1"]}],
            "output": [
                {"name": "PROBABILITIES", "data_type": "TYPE_FP32", "dims": ["4"]},
                {"name": "LOGITS", "data_type": "TYPE_FP32", "dims": ["4"]},
            ],
            "parameters": {key: {"string_value": value} for key, value in params.items()},
        }
    }


def make_info(*, untrained: bool = False) -> ModelInfo:
    return codec.parse_model_info(make_config(untrained=str(untrained).lower()), model_name="emotion")


# --- ModelInfo parsing ------------------------------------------------------------------------


def test_parse_model_info_reads_every_parameter() -> None:
    info = codec.parse_model_info(make_config(), model_name="emotion")
    assert info == ModelInfo(
        model_name="emotion",
        labels=("neu", "hap", "ang", "sad"),
        sample_rate=16000,
        audio_input="AUDIO",
        probabilities_output="PROBABILITIES",
        logits_output="LOGITS",
        min_duration_s=0.5,
        max_duration_s=30.0,
        untrained=False,
    )
    assert info.num_classes == 4


def test_parse_model_info_accepts_bare_config_and_untrained_true() -> None:
    bare = make_config(untrained="TRUE", sample_rate="8000")["config"]
    info = codec.parse_model_info(bare, model_name="emotion")
    assert info.untrained is True
    assert info.sample_rate == 8000


@pytest.mark.parametrize(
    "key",
    [
        "labels",
        "sample_rate",
        "audio_input",
        "probabilities_output",
        "logits_output",
        "min_duration_s",
        "max_duration_s",
        "untrained",
    ],
)
def test_parse_model_info_names_missing_parameter(key: str) -> None:
    config = make_config()
    del config["config"]["parameters"][key]
    with pytest.raises(IncompatibleModelError) as excinfo:
        codec.parse_model_info(config, model_name="emotion")
    assert str(excinfo.value) == f"model 'emotion' is not an emotion ensemble: missing parameter '{key}'"


def test_parse_model_info_without_parameters_map() -> None:
    config = make_config()
    del config["config"]["parameters"]
    with pytest.raises(IncompatibleModelError, match="missing parameter 'labels'"):
        codec.parse_model_info(config, model_name="other")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("labels", "neu,hap"),
        ("labels", "[]"),
        ("labels", '["neu", "neu"]'),
        ("labels", '["neu", 3]'),
        ("sample_rate", "16k"),
        ("sample_rate", "0"),
        ("min_duration_s", "short"),
        ("max_duration_s", "-1"),
        ("max_duration_s", "0.25"),  # not above min_duration_s=0.5
        ("untrained", "maybe"),
    ],
)
def test_parse_model_info_rejects_invalid_values(key: str, value: str) -> None:
    with pytest.raises(IncompatibleModelError, match=f"invalid parameter '{key}'"):
        codec.parse_model_info(make_config(**{key: value}), model_name="emotion")


def test_parse_model_info_rejects_undeclared_tensor_name() -> None:
    config = make_config(probabilities_output="PROBS")
    with pytest.raises(IncompatibleModelError, match="output 'PROBS'"):
        codec.parse_model_info(config, model_name="emotion")


def test_parse_model_info_does_not_mutate_config() -> None:
    config = make_config()
    snapshot = copy.deepcopy(config)
    codec.parse_model_info(config, model_name="emotion")
    assert config == snapshot


# --- decoding ---------------------------------------------------------------------------------


def test_decode_orders_best_first_and_keeps_every_class() -> None:
    probabilities = np.array([[0.1, 0.2, 0.6, 0.1]], dtype=np.float32)
    result = codec.decode_classification(probabilities, make_info())
    assert isinstance(result, Classification)
    assert result.label == "ang"
    assert result.score == pytest.approx(0.6)
    assert [s.label for s in result.scores] == ["ang", "hap", "neu", "sad"]  # tie keeps index order
    assert [s.score for s in result.scores] == pytest.approx([0.6, 0.2, 0.1, 0.1])
    assert all(isinstance(s.score, float) for s in result.scores)
    assert result.untrained is False


@pytest.mark.parametrize(("top_k", "expected"), [(1, ["sad"]), (2, ["sad", "neu"]), (10, ["sad", "neu", "hap", "ang"])])
def test_decode_top_k(top_k: int, expected: list[str]) -> None:
    probabilities = np.array([[0.3, 0.2, 0.1, 0.4]], dtype=np.float32)
    result = codec.decode_classification(probabilities, make_info(), top_k=top_k)
    assert [s.label for s in result.scores] == expected
    assert result.scores[0] == LabelScore("sad", float(np.float32(0.4)))
    assert result.label == "sad"


def test_decode_carries_untrained_flag() -> None:
    probabilities = np.full((1, 4), 0.25, dtype=np.float32)
    result = codec.decode_classification(probabilities, make_info(untrained=True))
    assert result.untrained is True
    assert result.label == "neu"  # all equal: lowest class index wins deterministically


@pytest.mark.parametrize("top_k", [0, -1, True, 1.5])
def test_decode_rejects_bad_top_k(top_k: Any) -> None:
    with pytest.raises(ValueError, match="top_k"):
        codec.decode_classification(np.full((1, 4), 0.25), make_info(), top_k=top_k)


def test_decode_rejects_wrong_class_count() -> None:
    with pytest.raises(codec.ModelChangedError, match="returned 3 probabilities"):
        codec.decode_classification(np.array([[0.2, 0.3, 0.5]]), make_info())


def test_decode_rejects_missing_output_and_non_finite() -> None:
    with pytest.raises(ServerError, match="no 'PROBABILITIES' output"):
        codec.decode_classification(None, make_info())
    with pytest.raises(ServerError, match="non-finite"):
        codec.decode_classification(np.array([[np.nan, 0.2, 0.3, 0.5]]), make_info())


def test_results_are_frozen() -> None:
    result = codec.decode_classification(np.array([[0.1, 0.2, 0.3, 0.4]]), make_info())
    with pytest.raises(AttributeError):
        result.label = "hap"  # type: ignore[misc]
    assert not hasattr(result, "__dict__")  # slotted


# --- validation and request building ----------------------------------------------------------


def test_validate_duration_names_the_limit() -> None:
    info = make_info()  # 0.5 s .. 30 s at 16 kHz
    codec.validate_duration(8000, info)  # exactly the minimum is accepted
    codec.validate_duration(30 * 16000, info)
    with pytest.raises(InvalidAudioError, match=r"min_duration_s") as short:
        codec.validate_duration(7999, info)
    assert "0.5 s" in str(short.value)
    with pytest.raises(InvalidAudioError, match=r"max_duration_s"):
        codec.validate_duration(30 * 16000 + 1, info)


def test_validate_duration_rounds_limits_like_the_server() -> None:
    # 0.33333 s * 16 kHz = 5333.28 samples; the server accepts round() = 5333 samples.
    info = codec.parse_model_info(make_config(min_duration_s="0.33333"), model_name="emotion")
    codec.validate_duration(5333, info)
    with pytest.raises(InvalidAudioError, match="min_duration_s"):
        codec.validate_duration(5332, info)


def test_prepare_audio_resamples_to_model_rate_then_checks_duration() -> None:
    info = make_info()
    samples = codec.prepare_audio(np.zeros(8000, dtype=np.float32), 8000, info)  # 1 s at 8 kHz
    assert samples.shape == (16000,)
    with pytest.raises(InvalidAudioError, match="min_duration_s"):
        codec.prepare_audio(np.zeros(3000, dtype=np.float32), 8000, info)


def test_build_inputs_sends_one_fp32_clip_with_batch_dim() -> None:
    samples = np.array([0.0, 0.5, -0.25], dtype=np.float32)
    (tensor,) = codec.build_inputs(samples, make_info())
    assert tensor.name() == "AUDIO"
    assert tensor.datatype() == "FP32"
    assert tensor.shape() == [1, 3]
    np.testing.assert_array_equal(np.frombuffer(tensor._get_content(), dtype=np.float32), samples)


def test_build_inputs_rejects_multidimensional_samples() -> None:
    with pytest.raises(InvalidAudioError, match="1-D"):
        codec.build_inputs(np.zeros((2, 3), dtype=np.float32), make_info())


def test_build_outputs_asks_the_logits_labelled_by_the_answering_model() -> None:
    outputs = codec.build_outputs(make_info())
    assert [o.name() for o in outputs] == ["PROBABILITIES", "LOGITS"]
    assert outputs[1]._output.parameters["classification"].int64_param == 4


class Answer:
    """The two outputs of a classify response, as tritonclient's InferResult hands them out."""

    def __init__(self, probabilities: list[float], classes: list[bytes]) -> None:
        self.outputs = {"PROBABILITIES": np.array([probabilities], np.float32), "LOGITS": np.array([classes])}

    def as_numpy(self, name: str) -> Any:
        return self.outputs.get(name)


def test_an_answer_is_labelled_by_the_model_that_gave_it() -> None:
    info = make_info()  # neu hap ang sad
    same = Answer([0.1, 0.2, 0.6, 0.1], [b"2.1:2:ang", b"0.5:1:hap", b"0.1:0:neu", b"0.1:3:sad"])
    result, relabelled = codec.decode_answer(same, info)
    assert (result.label, relabelled) == ("ang", False)
    reordered = Answer([0.1, 0.2, 0.6, 0.1], [b"2.1:2:neu", b"0.5:1:sad", b"0.1:0:hap", b"0.1:3:ang"])
    result, relabelled = codec.decode_answer(reordered, info)
    assert (result.label, relabelled) == ("neu", True)
    assert [s.label for s in result.scores] == ["neu", "sad", "hap", "ang"]
    old_repository = Answer([0.1, 0.2, 0.6, 0.1], [b"2.1:2", b"0.5:1", b"0.1:0", b"0.1:3"])
    assert codec.decode_answer(old_repository, info) == (
        codec.decode_classification(same.outputs["PROBABILITIES"], info),
        False,
    )
    more_classes = Answer([0.1, 0.2, 0.1, 0.1, 0.5], [b"2:4:x", b"1:1:hap", b"0:0:neu", b"0:3:sad"])
    with pytest.raises(codec.ModelChangedError, match=r"classes \[0, 1, 3, 4\]"):
        codec.decode_answer(more_classes, info)


def test_the_no_answer_row_is_no_classification() -> None:
    with pytest.raises(NoAnswerError, match=r"no answer for this clip.*all zeros"):
        codec.decode_classification(np.zeros((1, 4), np.float32), make_info())
    with pytest.raises(NoAnswerError):
        codec.decode_embedding(np.zeros((1, 8), np.float32), np.zeros((1, 4), np.float32), make_info())
    with pytest.raises(ServerError, match=r"sum to 0\.5"):
        codec.decode_classification(np.array([[0.1, 0.1, 0.2, 0.1]]), make_info())
    embedding = codec.decode_embedding(np.ones((1, 8), np.float32), np.full((1, 4), 0.25), make_info())
    assert embedding.shape == (8,)
    assert issubclass(NoAnswerError, InvalidAudioError)
    refused = InferenceServerException(
        "the classifier has no answer for this clip: the model computed NaN", status="StatusCode.INVALID_ARGUMENT"
    )
    assert type(from_triton_error(refused, model_name="emotion")) is NoAnswerError


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("inf"), float("nan")])
def test_validate_timeout_s_rejects_non_positive(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        codec.validate_timeout_s(timeout_s)


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.UNAVAILABLE", ServerUnavailableError),
        ("StatusCode.DEADLINE_EXCEEDED", RequestTimeoutError),
        ("StatusCode.INVALID_ARGUMENT", InvalidAudioError),
        ("StatusCode.NOT_FOUND", ModelNotReadyError),
        ("StatusCode.INTERNAL", ServerError),
        ("StatusCode.CANCELLED", TransportError),
    ],
)
def test_from_triton_error_maps_status(status: str, expected: type[EmotionClientError]) -> None:
    error = InferenceServerException("details from server", status=status)
    mapped = from_triton_error(error, model_name="emotion")
    assert type(mapped) is expected
    assert mapped.status == status
    assert "details from server" in str(mapped)


def test_unavailable_with_live_server_means_model_not_ready() -> None:
    error = InferenceServerException("has no available versions", status="StatusCode.UNAVAILABLE")
    assert is_ambiguous_unavailable(error)
    assert type(from_triton_error(error, model_name="emotion", server_live=True)) is ModelNotReadyError
    assert type(from_triton_error(error, model_name="emotion", server_live=False)) is ServerUnavailableError


def test_statusless_error_maps_to_root() -> None:
    mapped = from_triton_error(InferenceServerException("bad shape"), model_name="emotion")
    assert type(mapped) is EmotionClientError
    assert mapped.status is None
    assert not is_ambiguous_unavailable(InferenceServerException("x", status="StatusCode.INTERNAL"))


def test_error_tree() -> None:
    assert issubclass(RequestTimeoutError, TransportError)
    assert issubclass(ServerUnavailableError, TransportError)
    assert issubclass(ModelNotReadyError, ServerError)
    assert issubclass(InvalidAudioError, ValueError)
    for cls in (TransportError, ServerError, InvalidAudioError, IncompatibleModelError):
        assert issubclass(cls, EmotionClientError)
