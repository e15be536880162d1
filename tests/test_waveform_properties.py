"""Property-based tests (hypothesis) of the preprocess validation and normalisation in waveform.py.

Whatever array a request carries, `validate` either returns the clip (then it is exactly what the
limits allow) or raises `WaveformError` naming the problem and the limit; never anything else,
since any other exception would become an INTERNAL error instead of INVALID_ARGUMENT. Accepted
clips always normalise to finite values.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from emotion_build.model.geometry import receptive_field
from emotion_build.repository.description import (
    MAX_ABS_AMPLITUDE,
    ModelDescription,
    ensemble_parameters,
)
from emotion_build.triton_models.waveform import WaveformError, WaveformLimits, normalise, validate

LIMITS = WaveformLimits(sample_rate=16000, min_samples=40, max_samples=400, max_abs_amplitude=MAX_ABS_AMPLITUDE)
"""Small lengths so that hypothesis reaches both ends; the checks do not depend on the scale."""

limits_strategy = st.builds(
    lambda rate, low, span, amplitude: WaveformLimits(rate, low, low + span, amplitude),
    st.integers(1, 192_000),
    st.integers(1, 300),
    st.integers(0, 300),
    st.one_of(st.none(), st.floats(1e-3, 1e30)),
)

any_dtype = st.one_of(
    hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.complex_number_dtypes(),
    st.just(np.dtype(bool)),
)  # fmt: skip
any_array = hnp.arrays(any_dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=450))
float32_clip = hnp.arrays(
    np.float32,
    st.tuples(st.just(1), st.integers(0, 450)),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)
finite_clip = hnp.arrays(
    np.float32,
    st.tuples(st.just(1), st.integers(LIMITS.min_samples, LIMITS.max_samples)),
    elements=st.floats(-MAX_ABS_AMPLITUDE, MAX_ABS_AMPLITUDE, width=32),
)


def acceptable(audio: npt.NDArray[np.generic], limits: WaveformLimits) -> bool:
    """The specification, written independently of the implementation."""
    if audio.dtype != np.float32 or audio.ndim != 2 or audio.shape[0] != 1:
        return False
    if not limits.min_samples <= audio.shape[1] <= limits.max_samples:
        return False
    with np.errstate(invalid="ignore"):
        if not np.isfinite(audio).all():
            return False
        return limits.max_abs_amplitude is None or bool(np.abs(audio).max() <= limits.max_abs_amplitude)


@settings(max_examples=300)
@given(audio=any_array)
def test_any_array_is_accepted_exactly_when_the_limits_allow_it(audio: npt.NDArray[np.generic]) -> None:
    try:
        clip = validate(audio, LIMITS)
    except WaveformError as error:
        assert not acceptable(audio, LIMITS), f"refused a valid clip: {error}"
        return
    assert acceptable(audio, LIMITS)
    assert clip.dtype == np.float32 and clip.shape == (audio.shape[1],)
    np.testing.assert_array_equal(clip, audio[0])


@settings(max_examples=300)
@given(audio=float32_clip, limits=limits_strategy)
@example(audio=np.zeros((1, 0), np.float32), limits=LIMITS)
@example(audio=np.full((1, 50), np.float32(3.4e38)), limits=LIMITS)
def test_each_refusal_names_the_problem_and_the_limit(audio: npt.NDArray[np.float32], limits: WaveformLimits) -> None:
    try:
        validate(audio, limits)
    except WaveformError as error:
        message = str(error)
        samples = audio.shape[1]
        if samples < limits.min_samples:
            assert "too short" in message and f"({limits.min_samples} samples at {limits.sample_rate} Hz)" in message
        elif samples > limits.max_samples:
            assert "too long" in message and f"({limits.max_samples} samples at {limits.sample_rate} Hz)" in message
        elif not np.isfinite(audio).all():
            nan = int(np.isnan(audio).sum())
            assert f"found {nan} NaN and {int((~np.isfinite(audio)).sum()) - nan} infinite" in message
        else:
            assert limits.max_abs_amplitude is not None
            assert f"amplitude limit of {limits.max_abs_amplitude:g}" in message
        return
    assert acceptable(audio, limits)


@settings(max_examples=300)
@given(audio=finite_clip)
def test_accepted_clips_normalise_to_finite_zero_mean_values(audio: npt.NDArray[np.float32]) -> None:
    clip = validate(audio, LIMITS)
    normalised = normalise(clip, do_normalize=True)
    assert normalised.dtype == np.float32 and normalised.shape == clip.shape
    assert np.isfinite(normalised).all()
    # Zero mean, unit variance at most: no value can exceed sqrt(n) standard deviations.
    assert np.abs(normalised).max() <= math.sqrt(clip.size) * 1.001 + 1e-3
    spread = float(clip.astype(np.float64).std())
    if spread > 1e-2:
        assert abs(float(normalised.astype(np.float64).mean())) < 1e-3
        assert abs(float(normalised.astype(np.float64).std()) - 1.0) < 1e-2


@settings(max_examples=500)
@given(audio=finite_clip, offset=st.sampled_from([0.0, 0.05, -2.0, 1e3]))
def test_normalisation_is_the_feature_extractors_formula_bit_for_bit(
    audio: npt.NDArray[np.float32], offset: float
) -> None:
    """normalise() saves passes over the clip; the served input must still be exactly what
    `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` makes of it, to the last bit."""
    clip = (audio[0].astype(np.float64) + offset).astype(np.float32)
    expected = (clip - clip.mean()) / np.sqrt(clip.var() + 1e-7)
    ours = normalise(clip, do_normalize=True)
    assert ours.dtype == expected.dtype
    np.testing.assert_array_equal(ours, expected)


unit_clip = hnp.arrays(
    np.float32,
    st.tuples(st.just(1), st.integers(LIMITS.min_samples, LIMITS.max_samples)),
    elements=st.floats(-1, 1, width=32),
)


@settings(max_examples=200)
@given(audio=unit_clip, scale=st.floats(1.0, 1e4))
def test_normalisation_does_not_depend_on_loudness(audio: npt.NDArray[np.float32], scale: float) -> None:
    """Why the amplitude limit may be as wide as 16-bit PCM: louder, the model sees the same clip.

    (Quieter it does not quite: the variance floor of 1e-7 attenuates clips of very low variance.)"""
    tone = 0.5 * np.sin(np.arange(audio.shape[1]) / 3.0)  # some spread, so the variance floor is irrelevant
    clip = validate((audio + tone).astype(np.float32), LIMITS)
    loud = validate((clip.astype(np.float64) * scale).astype(np.float32)[None, :], LIMITS)
    np.testing.assert_allclose(normalise(clip, do_normalize=True), normalise(loud, do_normalize=True), atol=2e-3)


@given(kernels_strides=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=1, max_size=8))
def test_receptive_field_is_the_shortest_input_that_yields_a_frame(kernels_strides: list[tuple[int, int]]) -> None:
    kernels, strides = zip(*kernels_strides, strict=True)

    def frames(samples: int) -> int:
        for kernel, stride in kernels_strides:
            if samples < kernel:
                return 0
            samples = (samples - kernel) // stride + 1
        return samples

    field = receptive_field(kernels, strides)
    assert frames(field) >= 1
    assert field == 1 or frames(field - 1) == 0


def test_wav2vec2_base_needs_400_samples_and_the_minimum_duration_must_cover_them() -> None:
    assert receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == 400
    with pytest.raises(ValueError, match="shorter than the model's receptive field of 400 samples"):
        ModelDescription(labels=("a", "b"), min_duration_s=0.02)
    description = ModelDescription(labels=("a", "b"), max_abs_amplitude=1.0)
    assert ensemble_parameters(description)["max_abs_amplitude"] == "1.0"
    with pytest.raises(ValueError, match="max_abs_amplitude"):
        ModelDescription(labels=("a",), max_abs_amplitude=math.inf)


@given(
    rate=st.integers(-5, 5),
    low=st.integers(-5, 5),
    high=st.integers(-5, 5),
    amplitude=st.one_of(st.none(), st.floats(allow_nan=True)),
)
def test_limits_refuse_to_be_built_wrong(rate: int, low: int, high: int, amplitude: float | None) -> None:
    valid = rate > 0 and 1 <= low <= high and (amplitude is None or 0 < amplitude < math.inf)
    if valid:
        WaveformLimits(rate, low, high, amplitude)
    else:
        with pytest.raises(ValueError):
            WaveformLimits(rate, low, high, amplitude)
