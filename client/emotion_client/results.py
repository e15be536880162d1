"""Typed, immutable results so callers never index into bare dicts or server arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from .audio import AudioSource
from .errors import EmotionClientError

__all__ = [
    "BatchItem",
    "BatchProgress",
    "Classification",
    "EndpointHealth",
    "LabelScore",
    "ModelInfo",
    "ProgressCallback",
    "ServedModel",
    "StreamUpdate",
]


@dataclass(frozen=True, slots=True)
class LabelScore:
    """One class and its probability."""

    label: str
    """Class label exactly as the server's model config names it (e.g. ``"hap"``)."""
    score: float
    """Softmax probability in [0, 1]; scores of all classes sum to 1."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """The emotion predicted for one clip."""

    label: str
    """Most probable class label."""
    score: float
    """Probability of ``label``."""
    scores: tuple[LabelScore, ...]
    """Every class (or the ``top_k`` best), most probable first; ``scores[0]`` is ``label``."""
    untrained: bool
    """True when the server runs random weights: the prediction is meaningless (test deployments)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What the client learned from the ensemble's config, so nothing is hard-coded client-side."""

    model_name: str
    """Name of the ensemble these settings were read from."""
    labels: tuple[str, ...]
    """Class labels in class-index order, i.e. the order of the probabilities tensor."""
    sample_rate: int
    """Rate in Hz the model expects; other rates are resampled client-side."""
    audio_input: str
    """Name of the FP32 ``[1, n_samples]`` input tensor."""
    probabilities_output: str
    """Name of the FP32 ``[1, n_classes]`` softmax output tensor."""
    logits_output: str
    """Name of the FP32 ``[1, n_classes]`` raw logits output tensor."""
    min_duration_s: float
    """Shortest clip the server accepts, in seconds."""
    max_duration_s: float
    """Longest clip the server accepts, in seconds."""
    untrained: bool
    """True when the server's model has random weights."""
    embedding_output: str | None = None
    """Name of the FP32 ``[1, width]`` utterance-embedding output; None when the server has none."""
    weights_dtype: str = "float32"
    """Precision of the served classifier's weights (``float32``, ``bfloat16``, ``float16``, or
    ``int8+bfloat16``: int8 products in the encoder, the rest bf16); its tensors in and out are FP32
    either way. Older repositories do not say, and were float32."""
    engine: str | None = None
    """What runs the classifier (``torchscript`` or ``openvino``); None from older repositories."""
    family: str | None = None
    """The checkpoint's Hugging Face family (``wav2vec2``, ``hubert``, ``wavlm``, ``data2vec-audio``)."""
    stream_model: str | None = None
    """The live-stream model beside this ensemble; None from repositories older than named models."""

    @property
    def num_classes(self) -> int:
        """Length of the probabilities vector the server returns."""
        return len(self.labels)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedModel:
    """One emotion model a server holds, as ``models()`` lists it: call it with ``model_name=name``."""

    name: str
    versions: tuple[int, ...]
    """The versions ready to answer, ascending; pin one with ``model_version=``."""
    info: ModelInfo
    """Its labels, rate, limits, precision, engine and family, as its (newest) config says."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamUpdate:
    """The emotion of one window of a live stream (``EmotionClient.stream``)."""

    start_s: float
    """Where the window starts, in seconds from the start of the stream."""
    end_s: float
    """Where it ends; the update equals ``classify()`` on exactly the samples in [start_s, end_s)."""
    classification: Classification


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchItem:
    """The outcome of one input of ``classify_many``: exactly one of ``result`` and ``error`` is set."""

    index: int
    """Position of the input in the sequence given to ``classify_many``."""
    source: AudioSource
    """The input itself (path or array), so results can be matched without keeping the list."""
    result: Classification | None = None
    """The classification, or ``None`` when this input failed."""
    error: EmotionClientError | None = None
    """Why this input failed (bad file, too short, timeout, ...), or ``None`` when it succeeded."""

    def __post_init__(self) -> None:
        if (self.result is None) == (self.error is None):
            raise ValueError("a BatchItem holds exactly one of result and error")

    @property
    def ok(self) -> bool:
        """True when the input was classified."""
        return self.error is None

    def unwrap(self) -> Classification:
        """Return the classification, or raise the error this input failed with."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchProgress:
    """Passed to the ``on_progress`` callback of ``classify_many`` each time an input finishes."""

    item: BatchItem
    """The input that just finished, successfully or not."""
    done: int
    """Inputs finished so far, this one included."""
    failed: int
    """Inputs among ``done`` that failed."""
    total: int
    """Number of inputs in the batch."""


ProgressCallback: TypeAlias = Callable[[BatchProgress], None]
"""Called once per finished input, in completion order, never from two threads at once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointHealth:
    """What one endpoint said when asked about the server and the model."""

    url: str
    """The endpoint, as given to the client."""
    live: bool
    """The server answered its liveness check."""
    ready: bool
    """The model is loaded and can serve requests on this endpoint."""
    error: str | None = None
    """Why the endpoint is not live or not ready, when it said (``None`` when healthy)."""
