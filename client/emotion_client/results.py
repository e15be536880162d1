"""Typed, immutable results so callers never index into bare dicts or server arrays."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Classification", "LabelScore", "ModelInfo"]


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

    @property
    def num_classes(self) -> int:
        """Length of the probabilities vector the server returns."""
        return len(self.labels)
