"""Request/response codec shared by the sync client and any async twin.

Everything that is not I/O lives here as pure functions, so both clients behave identically and
the whole protocol (config parsing, validation, tensor layout, decoding) is tested without a
server. The clients only send what these functions build and hand back what they decode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferInput, InferRequestedOutput  # type: ignore[import-untyped, unused-ignore]

from .audio import AudioSource, load_audio
from .errors import (
    EmotionClientError,
    IncompatibleModelError,
    InvalidAudioError,
    ModelControlError,
    NoAnswerError,
    ServerError,
    UnknownModelError,
)
from .results import Classification, LabelScore, ModelInfo, ServedModel

__all__ = [
    "ModelChangedError",
    "build_embedding_outputs",
    "build_inputs",
    "build_outputs",
    "check_answered",
    "control_error",
    "decode_answer",
    "decode_classification",
    "decode_embedding",
    "parse_model_info",
    "prepare_audio",
    "ready_versions",
    "send_control",
    "served_labels",
    "served_model",
    "stream_model_name",
    "unknown_model",
    "validate_duration",
    "validate_timeline",
    "validate_timeout_s",
    "validate_top_k",
]

_AUDIO_DATATYPE = "FP32"
"""Wire dtype of the audio tensor; the ensemble declares TYPE_FP32."""
_SUM_TOLERANCE = 1e-3
"""How far an answer's probabilities may sum from 1 (float32 softmax sums to 1 within about 1e-6)."""


class ModelChangedError(ServerError):
    """The server answered with another number of classes than the model description the client holds:
    the model was replaced since. The clients read the description again and resend once."""


def parse_model_info(config: Mapping[str, Any], *, model_name: str) -> ModelInfo:
    """Read the ensemble's self-description from ``get_model_config(..., as_json=True)``.

    Labels, rate and tensor names come from the server so that retraining or renaming on the
    server never requires a client release. Accepts the response (``{"config": {...}}``) or the
    bare config.
    """
    body = config.get("config", config)
    if not isinstance(body, Mapping):
        raise IncompatibleModelError(f"model '{model_name}' returned a malformed config")
    raw_params = body.get("parameters", {})
    params: Mapping[str, Any] = raw_params if isinstance(raw_params, Mapping) else {}

    def param(key: str) -> str:
        entry = params.get(key)
        value = entry.get("string_value") if isinstance(entry, Mapping) else None
        if not isinstance(value, str):
            raise IncompatibleModelError(
                f"model '{model_name}' is not an emotion ensemble: missing parameter '{key}'"
            )
        return value

    labels = _parse_labels(param("labels"), model_name)
    sample_rate_text = param("sample_rate")
    try:
        sample_rate = int(sample_rate_text)
    except ValueError:
        raise _invalid(model_name, "sample_rate", "a positive integer", sample_rate_text) from None
    if sample_rate <= 0:
        raise _invalid(model_name, "sample_rate", "a positive integer", sample_rate_text)
    min_duration_s = _parse_seconds(model_name, "min_duration_s", param("min_duration_s"))
    max_duration_s = _parse_seconds(model_name, "max_duration_s", param("max_duration_s"))
    if max_duration_s <= min_duration_s:
        expected = f"a value above min_duration_s={min_duration_s:g}"
        raise _invalid(model_name, "max_duration_s", expected, str(max_duration_s))
    untrained_text = param("untrained")
    if untrained_text.strip().lower() not in ("true", "false"):
        raise _invalid(model_name, "untrained", "'true' or 'false'", untrained_text)

    info = ModelInfo(
        model_name=model_name,
        labels=labels,
        sample_rate=sample_rate,
        audio_input=param("audio_input"),
        probabilities_output=param("probabilities_output"),
        logits_output=param("logits_output"),
        min_duration_s=min_duration_s,
        max_duration_s=max_duration_s,
        untrained=untrained_text.strip().lower() == "true",
        embedding_output=_optional_param(params, "embedding_output"),
        weights_dtype=_optional_param(params, "weights_dtype") or "float32",
        engine=_optional_param(params, "engine"),
        family=_optional_param(params, "family") or None,
        stream_model=_optional_param(params, "stream_model"),
    )
    _check_declared(body, "input", (info.audio_input,), model_name)
    outputs = (info.probabilities_output, info.logits_output)
    _check_declared(
        body, "output", outputs + ((info.embedding_output,) if info.embedding_output else ()), model_name
    )
    return info


def _optional_param(params: Mapping[str, Any], key: str) -> str | None:
    """Parameters added after the first release: older repositories simply lack them."""
    entry = params.get(key)
    value = entry.get("string_value") if isinstance(entry, Mapping) else None
    return value if isinstance(value, str) and value else None


def _invalid(model_name: str, key: str, expected: str, value: str) -> IncompatibleModelError:
    return IncompatibleModelError(
        f"model '{model_name}' has an invalid parameter '{key}': expected {expected}, got {value!r}"
    )


def _parse_labels(text: str, model_name: str) -> tuple[str, ...]:
    """Decode the JSON label list, rejecting anything that would misalign scores and labels."""
    expected = "a JSON list of distinct non-empty strings"
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError:
        raise _invalid(model_name, "labels", expected, text) from None
    if (
        not isinstance(decoded, list)
        or not decoded
        or not all(isinstance(label, str) and label for label in decoded)
        or len(set(decoded)) != len(decoded)
    ):
        raise _invalid(model_name, "labels", expected, text)
    return tuple(decoded)


def _parse_seconds(model_name: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _invalid(model_name, key, "a number of seconds", text) from None
    if math.isnan(value) or value < 0:
        raise _invalid(model_name, key, "a non-negative number of seconds", text)
    return value


def _check_declared(body: Mapping[str, Any], kind: str, names: tuple[str, ...], model_name: str) -> None:
    """Catch a parameter naming a tensor the model does not have before any request is sent."""
    tensors = body.get(kind)
    if not isinstance(tensors, list):
        return  # Older servers may omit the list; the server still validates each request.
    declared = {t.get("name") for t in tensors if isinstance(t, Mapping)}
    for name in names:
        if name not in declared:
            raise IncompatibleModelError(
                f"model '{model_name}' names {kind} '{name}' in its parameters but declares only "
                f"{sorted(str(d) for d in declared)}"
            )


def validate_top_k(top_k: int | None) -> None:
    """Reject a bad ``top_k`` before audio is loaded or anything is sent."""
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be None (all classes) or an integer >= 1, got {top_k!r}")


def validate_timeout_s(timeout_s: float | None) -> None:
    """Reject non-positive deadlines, which gRPC would turn into an immediate, confusing timeout."""
    if timeout_s is None:
        return
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")


def validate_duration(n_samples: int, info: ModelInfo) -> None:
    """Fail before sending a clip the server would reject, naming the limit that was crossed.

    Limits are compared in samples, rounded the way the server rounds them, so a clip the
    server would accept is never refused here because of float error in seconds.
    """
    min_samples = max(1, round(info.min_duration_s * info.sample_rate))
    max_samples = round(info.max_duration_s * info.sample_rate)
    duration_s = n_samples / info.sample_rate
    if n_samples < min_samples:
        raise InvalidAudioError(
            f"audio is {duration_s:.3f} s long, shorter than the minimum of {info.min_duration_s:g} s "
            f"(min_duration_s) of model '{info.model_name}'"
        )
    if n_samples > max_samples:
        raise InvalidAudioError(
            f"audio is {duration_s:.3f} s long, longer than the maximum of {info.max_duration_s:g} s "
            f"(max_duration_s) of model '{info.model_name}'; split it into shorter clips"
        )


def prepare_audio(audio: AudioSource, sample_rate: int | None, info: ModelInfo) -> npt.NDArray[np.float32]:
    """Load, convert and length-check one clip exactly as the model needs it."""
    samples = load_audio(audio, sample_rate=sample_rate, target_rate=info.sample_rate)
    validate_duration(samples.shape[0], info)
    return samples


def build_inputs(samples: npt.NDArray[np.float32], info: ModelInfo) -> list[InferInput]:
    """Wrap one mono clip as the ensemble's ``[1, n_samples]`` FP32 input (batch of one)."""
    if samples.ndim != 1:
        raise InvalidAudioError(f"expected 1-D samples, got shape {samples.shape}; use prepare_audio first")
    batch = np.ascontiguousarray(samples, dtype=np.float32)[np.newaxis, :]
    tensor = InferInput(info.audio_input, list(batch.shape), _AUDIO_DATATYPE)
    tensor.set_data_from_numpy(batch)
    return [tensor]


def build_outputs(info: ModelInfo) -> list[InferRequestedOutput]:
    """The probabilities, and the logits through Triton's classification extension: each class's
    index with the label the answering model's config gives it (``value:index:label``), so an answer
    is labelled by the model version that computed it, not by what this client read earlier."""
    return [
        InferRequestedOutput(info.probabilities_output),
        InferRequestedOutput(info.logits_output, class_count=info.num_classes),
    ]


def served_labels(classes: npt.NDArray[Any] | None, info: ModelInfo) -> tuple[str, ...] | None:
    """The labels of class 0..n-1 as the answer's classification strings give them; None where they carry
    no labels (a repository exported before the logits had a label file, or an answer without them).

    Raises ``ModelChangedError`` when the indices are not those of ``info``'s classes."""
    if classes is None:
        return None
    by_index: dict[int, str] = {}
    for entry in np.asarray(classes).reshape(-1):
        text = entry.decode("utf-8", "replace") if isinstance(entry, bytes) else str(entry)
        parts = text.split(":", 2)
        if len(parts) < 3:
            return None
        try:
            index = int(parts[1])
        except ValueError:
            raise ServerError(f"model '{info.model_name}' returned a malformed class {text!r}") from None
        by_index[index] = parts[2]
    if sorted(by_index) != list(range(info.num_classes)):
        raise ModelChangedError(
            f"model '{info.model_name}' answered for classes {sorted(by_index)}, not the {info.num_classes} "
            "classes it was described with: it was replaced"
        )
    return tuple(by_index[index] for index in range(info.num_classes))


def build_embedding_outputs(info: ModelInfo) -> list[InferRequestedOutput]:
    """The embedding and the probabilities, whose sum tells an answer from the no-answer row; refuse early
    when the deployed repository predates the embedding."""
    if info.embedding_output is None:
        raise IncompatibleModelError(
            f"model '{info.model_name}' does not publish an utterance embedding; "
            "re-export the repository with a current emotion-build"
        )
    return [InferRequestedOutput(info.embedding_output), InferRequestedOutput(info.probabilities_output)]


def decode_embedding(
    embedding: npt.NDArray[Any] | None, probabilities: npt.NDArray[Any] | None, info: ModelInfo
) -> npt.NDArray[np.float32]:
    """The ``[1, width]`` embedding as a 1-D float32 array the caller owns, if the clip was answered."""
    check_answered(probabilities, info)
    if embedding is None:
        raise ServerError(f"model '{info.model_name}' returned no '{info.embedding_output}' output")
    flat = np.array(embedding, dtype=np.float32).reshape(-1)
    if flat.size == 0 or not np.all(np.isfinite(flat)):
        raise ServerError(f"model '{info.model_name}' returned an empty or non-finite embedding")
    return flat


def check_answered(probabilities: npt.NDArray[Any] | None, info: ModelInfo) -> npt.NDArray[np.float64]:
    """The ``[1, n_classes]`` probabilities as a flat float64 array, if they are an answer.

    A classified clip's probabilities sum to 1. The classifier answers a clip it cannot compute
    with zeros (the libtorch runtime cannot fail one request of a batch, build's served_classifier),
    which must reach no caller as a label: that raises ``NoAnswerError``; any other sum a
    ``ServerError``."""
    if probabilities is None:
        raise ServerError(f"model '{info.model_name}' returned no '{info.probabilities_output}' output")
    flat = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ServerError(f"model '{info.model_name}' returned non-finite probabilities")
    if flat.size and not flat.any():
        raise NoAnswerError(
            f"model '{info.model_name}' has no answer for this clip: the classifier answered it with its "
            "no-answer row (all zeros), as it does when the model computes NaN or infinity for a clip"
        )
    total = float(flat.sum())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ServerError(f"model '{info.model_name}' returned probabilities that sum to {total:.6g}, not 1")
    return flat


def validate_timeline(window_s: float, hop_s: float, smooth_s: float, info: ModelInfo) -> None:
    """Windows must be clips the server accepts; hops longer than windows would leave gaps."""
    for name, value in (("window_s", window_s), ("hop_s", hop_s), ("smooth_s", smooth_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if hop_s > window_s:
        raise ValueError(f"hop_s ({hop_s:g}) must not exceed window_s ({window_s:g}), or audio is skipped")
    if not info.min_duration_s <= window_s <= info.max_duration_s:
        raise ValueError(
            f"window_s must lie within the model's limits {info.min_duration_s:g} s to "
            f"{info.max_duration_s:g} s, got {window_s:g}"
        )


def decode_answer(response: Any, info: ModelInfo, *, top_k: int | None = None) -> tuple[Classification, bool]:
    """A classify response as a ``Classification`` labelled by the model that answered, and whether those
    labels differ from ``info``'s (the model was replaced: the client reads its description again)."""
    labels = served_labels(response.as_numpy(info.logits_output), info)
    probabilities = response.as_numpy(info.probabilities_output)
    result = decode_classification(probabilities, info, top_k=top_k, labels=labels)
    return result, labels is not None and labels != info.labels


def decode_classification(
    probabilities: npt.NDArray[Any] | None,
    info: ModelInfo,
    *,
    top_k: int | None = None,
    labels: tuple[str, ...] | None = None,
) -> Classification:
    """Turn the ``[1, n_classes]`` probabilities tensor into a ranked ``Classification``.

    ``labels`` are the answer's own (``served_labels``); without them, ``info``'s. Ties keep
    class-index order (stable sort) so results are deterministic across runs.
    """
    validate_top_k(top_k)
    names = labels if labels is not None else info.labels
    if probabilities is not None and np.asarray(probabilities).size != len(names):
        raise ModelChangedError(
            f"model '{info.model_name}' returned {np.asarray(probabilities).size} probabilities "
            f"(shape {np.shape(probabilities)}) for {len(names)} labels"
        )
    flat = check_answered(probabilities, info)
    order = np.argsort(-flat, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    scores = tuple(LabelScore(names[i], float(flat[i])) for i in order)
    return Classification(
        label=scores[0].label,
        score=scores[0].score,
        scores=scores,
        untrained=info.untrained,
    )


DEFAULT_STREAM_MODEL = "stream"
"""The live-stream model of repositories written before each ensemble named its own."""


def stream_model_name(info: ModelInfo) -> str:
    return info.stream_model or DEFAULT_STREAM_MODEL


def ready_versions(index: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Each model's READY versions from ``get_model_repository_index(as_json=True)``, by name."""
    ready: dict[str, set[int]] = {}
    for entry in index.get("models", []):
        if not isinstance(entry, Mapping) or entry.get("state") != "READY":
            continue
        name, version = entry.get("name"), str(entry.get("version", ""))
        if isinstance(name, str):
            ready.setdefault(name, set())
            if version.isdigit():
                ready[name].add(int(version))
    return {name: tuple(sorted(versions)) for name, versions in sorted(ready.items())}


def served_model(name: str, versions: tuple[int, ...], config: Mapping[str, Any]) -> ServedModel | None:
    """The emotion model a ready model's config describes, or None when it is not one (a preprocess,
    a classifier, a stream model, or a model of another application)."""
    body = config.get("config", config)
    if not isinstance(body, Mapping) or body.get("platform") != "ensemble":
        return None
    try:
        info = parse_model_info(config, model_name=name)
    except IncompatibleModelError:
        return None
    return ServedModel(name=name, versions=versions, info=info)


def indexed_names(index: Mapping[str, Any]) -> frozenset[str]:
    """Every model name in ``get_model_repository_index(as_json=True)``, whatever its state (loading,
    unloaded, failed)."""
    return frozenset(
        entry["name"] for entry in index.get("models", []) if isinstance(entry, Mapping) and "name" in entry
    )


def unknown_model(
    name: str, version: str, models: tuple[ServedModel, ...], *, indexed: Collection[str] = ()
) -> UnknownModelError | None:
    """The error for a model (or a version of it) the server does not hold, naming what it holds;
    None when it holds it, or when its repository has it (`indexed`) and it is only not ready: loading,
    or unloaded, which the server's own error says."""
    available = tuple(model.name for model in models)
    by_name = {model.name: model for model in models}
    if name not in by_name and name in indexed:
        return None
    if name not in by_name:
        listed = ", ".join(available) if available else "none"
        return UnknownModelError(
            f"the server has no emotion model '{name}'; it has: {listed} "
            "(`emotion-client models` lists them)",
            available=available,
        )
    versions = by_name[name].versions
    if version and (not version.isdigit() or int(version) not in versions):
        return UnknownModelError(
            f"model '{name}' has no version {version} ready; "
            f"ready: {', '.join(map(str, versions)) or 'none'}",
            available=available,
        )
    return None


ControlAction = Literal["load", "unload"]

_CONTROL_REFUSED_MARKERS = ("not allowed", "polling is enabled")
"""How Triton refuses load/unload requests when it was not started with explicit model control."""


def send_control(
    triton: Any, action: ControlAction, name: str, headers: Mapping[str, str], deadline_s: float
) -> Any:
    """One load or unload request (the asyncio client awaits what this returns); an ensemble unloads
    with the models it is made of."""
    if action == "load":
        return triton.load_model(name, headers=headers, client_timeout=deadline_s)
    return triton.unload_model(name, headers=headers, client_timeout=deadline_s, unload_dependents=True)


def control_error(action: ControlAction, name: str, error: EmotionClientError) -> EmotionClientError:
    """A refused load or unload, saying how to start a server that takes them."""
    if any(marker in error.message for marker in _CONTROL_REFUSED_MARKERS):
        return ModelControlError(
            f"the server refused to {action} model '{name}': it does not take model control requests; "
            f"start it with `python -m emotion_build serve --model-control explicit` (tritonserver "
            f"--model-control-mode=explicit): {error.message}",
            status=error.status,
        )
    if isinstance(error, ServerError) and not isinstance(error, ModelControlError):
        return ModelControlError(
            f"the server could not {action} model '{name}': {error.message}", status=error.status
        )
    return error
