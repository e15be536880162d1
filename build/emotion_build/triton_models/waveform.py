"""Server-side checks and normalisation of one clip, with NumPy only (it runs in Triton's stub).

Normalisation copies `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` for one unpadded clip,
in float32 like the feature extractor, so served inputs match what the model saw in training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

__all__ = ["NORMALISE_EPSILON", "WaveformError", "WaveformLimits", "normalise", "validate"]

NORMALISE_EPSILON = 1e-7
"""The variance floor of the Hugging Face feature extractor."""

FloatArray = npt.NDArray[np.float32]


class WaveformError(ValueError):
    """A request the model must not run on; the message is sent back to the caller as is."""


@dataclasses.dataclass(frozen=True, slots=True)
class WaveformLimits:
    sample_rate: int
    min_samples: int
    max_samples: int

    def describe(self, samples: int) -> str:
        return f"{samples / self.sample_rate:.3f} s ({samples} samples at {self.sample_rate} Hz)"


def validate(audio: npt.NDArray[np.generic], limits: WaveformLimits) -> FloatArray:
    """Return the clip as 1-D float32, or raise a `WaveformError` that names the problem and the limit."""
    if audio.dtype != np.float32:
        raise WaveformError(f"audio must be FP32 samples, got {audio.dtype}")
    if audio.ndim != 2 or audio.shape[0] != 1:
        raise WaveformError(f"audio must have shape [1, samples] (one mono clip per request), got {list(audio.shape)}")
    clip: FloatArray = audio[0]
    samples = clip.shape[0]
    if samples < limits.min_samples:
        raise WaveformError(
            f"audio is too short: {limits.describe(samples)}; the minimum is {limits.describe(limits.min_samples)}"
        )
    if samples > limits.max_samples:
        raise WaveformError(
            f"audio is too long: {limits.describe(samples)}; the maximum is {limits.describe(limits.max_samples)}"
        )
    finite = np.isfinite(clip)
    if not finite.all():
        nan = int(np.isnan(clip).sum())
        inf = int(samples - finite.sum()) - nan
        raise WaveformError(f"audio must be finite: found {nan} NaN and {inf} infinite samples of {samples}")
    return clip


def normalise(clip: FloatArray, *, do_normalize: bool) -> FloatArray:
    if not do_normalize:
        return clip.astype(np.float32, copy=False)
    normed: FloatArray = (clip - clip.mean()) / np.sqrt(clip.var() + NORMALISE_EPSILON)
    return normed.astype(np.float32, copy=False)
