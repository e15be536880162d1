"""Server-side checks and normalisation of one clip, with NumPy only (it runs in Triton's stub).

`validate` refuses, in this order: a dtype other than float32, a shape other than [1, samples],
too few or too many samples, NaN or infinite samples, and samples louder than the amplitude limit.

Normalisation copies `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` for one unpadded clip,
in float32 like the feature extractor, so served inputs match what the model saw in training.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

__all__ = ["NORMALISE_EPSILON", "FloatArray", "WaveformError", "WaveformLimits", "normalise", "validate"]

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
    max_abs_amplitude: float | None = None
    """Largest |sample| accepted; None checks no amplitude (the classifier's normalised input)."""

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError(f"need 1 <= min_samples <= max_samples, got {self.min_samples} and {self.max_samples}")
        if self.max_abs_amplitude is not None and not 0 < self.max_abs_amplitude < math.inf:
            raise ValueError(f"max_abs_amplitude must be a positive finite number, got {self.max_abs_amplitude}")

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
    # The largest and the smallest sample, two passes without temporaries: both propagate NaN and
    # infinities, so they also say whether every sample is finite. A 10 s clip is checked in about
    # half the time of isfinite().all() plus abs().max(), and this runs on every request, twice
    # (preprocess, then the classifier on its own input). Counting is left to the error path.
    high, low = float(clip.max()), float(clip.min())
    if not (math.isfinite(high) and math.isfinite(low)):
        nan = int(np.isnan(clip).sum())
        inf = int(np.isinf(clip).sum())
        raise WaveformError(f"audio must be finite: found {nan} NaN and {inf} infinite samples of {samples}")
    if limits.max_abs_amplitude is not None:
        peak = max(high, -low)
        if peak > limits.max_abs_amplitude:
            loud = int((np.abs(clip) > limits.max_abs_amplitude).sum())
            raise WaveformError(
                f"audio is not a waveform: {loud} of {samples} samples exceed the amplitude limit of "
                f"{limits.max_abs_amplitude:g} (peak |sample| {peak:.4g}); send float samples in [-1, 1] "
                "(integer PCM divided by its full scale)"
            )
    return clip


def normalise(clip: FloatArray, *, do_normalize: bool) -> FloatArray:
    """`(clip - clip.mean()) / np.sqrt(clip.var() + 1e-7)` as the feature extractor writes it, bit
    for bit, in five passes over the clip instead of seven: `var()` would compute the mean and the
    centred clip again, and the division would get an array of its own. The same float32 sums in
    the same order as NumPy's `var` (pairwise sum of the squared centred samples, divided by the
    count) and the epsilon added to a float32 scalar as there, so the result does not move by an ulp.
    It runs on every request in a stub that wakes cold: each pass and each fresh array shows."""
    if not do_normalize:
        return clip.astype(np.float32, copy=False)
    centred: FloatArray = clip - clip.mean()
    variance = np.float32(np.multiply(centred, centred).sum() / clip.size)
    np.divide(centred, np.sqrt(variance + NORMALISE_EPSILON), out=centred)
    return centred.astype(np.float32, copy=False)
