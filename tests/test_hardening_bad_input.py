"""Bad input straight at the server with raw tritonclient, bypassing every check of the SDK.

Each bad request must come back INVALID_ARGUMENT with a message that names the problem and the
limit; afterwards a good request must still be served, by the very same stub processes (a crashed
stub would be replaced by nothing: see test_hardening_faults). Requests sent together with a bad
neighbour, so that they share an execution, must get the answers they get alone.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from triton_probes import SAMPLE_RATE, clip, counts_after, infer, model_counts, raw_client, refusal, report, tensor

from emotion_build.server import StubProcess, TritonServer
from emotion_build.triton_models.waveform import normalise

INVALID = "StatusCode.INVALID_ARGUMENT"
MAX_SAMPLES = 30 * SAMPLE_RATE  # the test repository's defaults: 0.1 s to 30 s
BATCH = 8  # the test repository's max_batch_size (tests/conftest.py)
GOOD = clip(1.0, seed=42)


def with_samples(values: dict[int, float], samples: int = SAMPLE_RATE) -> npt.NDArray[np.float32]:
    audio = clip(samples / SAMPLE_RATE, seed=1)
    for index, value in values.items():
        audio[0, index] = value
    return audio


# (id, array, datatype, input name, pattern the message must match)
CASES: list[tuple[str, npt.NDArray[Any], str, str, str]] = [
    ("empty", np.zeros((1, 0), np.float32), "FP32", "audio", r"too short: 0\.000 s \(0 samples.*minimum is 0\.100 s"),
    ("one-sample", np.zeros((1, 1), np.float32), "FP32", "audio", r"too short: .*\(1 samples.*minimum is 0\.100 s"),
    (
        "below-receptive-field",
        clip(399 / SAMPLE_RATE),
        "FP32",
        "audio",
        r"too short: 0\.025 s \(399 samples.*minimum is 0\.100 s \(1600 samples",
    ),
    (
        "too-long",
        clip((MAX_SAMPLES + 1) / SAMPLE_RATE),
        "FP32",
        "audio",
        r"too long: 30\.000 s \(480001 samples.*maximum is 30\.000 s \(480000 samples",
    ),
    (
        "nan",
        with_samples({100: np.nan}),
        "FP32",
        "audio",
        r"must be finite: found 1 NaN and 0 infinite samples of 16000",
    ),
    ("+inf", with_samples({5: np.inf}), "FP32", "audio", r"must be finite: found 0 NaN and 1 infinite"),
    ("-inf", with_samples({5: -np.inf, 6: np.nan}), "FP32", "audio", r"must be finite: found 1 NaN and 1 infinite"),
    (
        "int64",
        np.zeros((1, SAMPLE_RATE), np.int64),
        "INT64",
        "audio",
        r"data-type is 'INT64', but model .* expects 'FP32'",
    ),
    (
        "fp64",
        np.zeros((1, SAMPLE_RATE), np.float64),
        "FP64",
        "audio",
        r"data-type is 'FP64', but model .* expects 'FP32'",
    ),
    (
        "bytes",
        np.array([[b"\x00\x01"] * 100], dtype=np.object_),
        "BYTES",
        "audio",
        r"data-type is 'BYTES', but model .* expects 'FP32'",
    ),
    (
        "rank-1",
        np.zeros(SAMPLE_RATE, np.float32),
        "FP32",
        "audio",
        rf"batch-size must be <= {BATCH} for 'emotion'",
    ),
    (
        "rank-2-batch-of-2",
        np.zeros((2, SAMPLE_RATE), np.float32),
        "FP32",
        "audio",
        r"shape \[1, samples\] \(one mono clip per request\), got \[2, 16000\]",
    ),
    (
        "rank-3",
        np.zeros((1, 1, SAMPLE_RATE), np.float32),
        "FP32",
        "audio",
        r"unexpected shape for input 'audio' for model 'emotion'\. Expected \[-1,-1\], got \[1,1,16000\]",
    ),
    (
        "amplitude-1e6",
        with_samples({0: 1e6, 1: -2e6}),
        "FP32",
        "audio",
        r"not a waveform: 2 of 16000 samples exceed the amplitude limit of 32768 \(peak \|sample\| 2e\+06\)",
    ),
    (
        "amplitude-3e38",
        np.full((1, SAMPLE_RATE), 3e38, np.float32),
        "FP32",
        "audio",
        r"not a waveform: 16000 of 16000 samples exceed the amplitude limit of 32768",
    ),
    ("wrong-input-name", GOOD, "FP32", "samples", r"unexpected inference input 'samples' for model 'emotion'"),
]


@pytest.fixture(scope="module")
def stubs(triton: TritonServer) -> Iterator[tuple[StubProcess, ...]]:
    """The stub processes before the first bad request; every test checks they are the same after."""
    before = triton.python_stubs()
    assert {stub.model for stub in before} == {"preprocess", "classifier"}
    yield before
    assert triton.python_stubs() == before


@pytest.fixture(scope="module")
def good_answer(triton: TritonServer) -> npt.NDArray[np.float32]:
    return infer(triton.endpoints.grpc_url, GOOD)


def still_serves(triton: TritonServer, stubs: tuple[StubProcess, ...], good_answer: npt.NDArray[np.float32]) -> None:
    assert triton.running
    np.testing.assert_allclose(infer(triton.endpoints.grpc_url, GOOD), good_answer, atol=1e-6)
    assert triton.python_stubs() == stubs, "a stub process died or was replaced"


@pytest.mark.parametrize(
    ("array", "datatype", "name", "pattern"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_with_the_problem_and_the_limit(
    triton: TritonServer,
    stubs: tuple[StubProcess, ...],
    good_answer: npt.NDArray[np.float32],
    request: pytest.FixtureRequest,
    array: npt.NDArray[Any],
    datatype: str,
    name: str,
    pattern: str,
) -> None:
    url = triton.endpoints.grpc_url
    before = model_counts(url, "classifier")
    error = refusal(url, array, datatype=datatype, name=name)
    ok = error.status() == INVALID and re.search(pattern, error.message()) is not None
    report("bad input (server)", request.node.callspec.id, tried=1, as_expected=int(ok))
    assert ok, f"{error.status()}: {error.message()}"
    assert model_counts(url, "classifier") == before, "a refused clip reached the classifier"
    still_serves(triton, stubs, good_answer)


def test_a_request_without_its_input_or_with_a_short_payload_is_refused(
    triton: TritonServer, stubs: tuple[StubProcess, ...], good_answer: npt.NDArray[np.float32]
) -> None:
    from tritonclient.utils import InferenceServerException

    url = triton.endpoints.grpc_url
    with pytest.raises(InferenceServerException) as missing:
        raw_client(url).infer("emotion", [])
    assert missing.value.status() == INVALID
    assert "expected 1 inputs but got 0 inputs for model 'emotion'" in missing.value.message()
    truncated = tensor(GOOD)
    truncated.set_shape([1, 2 * GOOD.shape[1]])  # claims twice the samples it carries
    with pytest.raises(InferenceServerException) as short:
        raw_client(url).infer("emotion", [truncated])
    assert short.value.status() == INVALID
    assert "input byte size mismatch for input 'audio'" in short.value.message()
    assert f"Expected {2 * GOOD.size * 4}, got {GOOD.size * 4}" in short.value.message()
    report("bad input (server)", "no-input", tried=1, as_expected=1)
    report("bad input (server)", "payload-shorter-than-shape", tried=1, as_expected=1)
    still_serves(triton, stubs, good_answer)


def test_unscaled_16_bit_pcm_is_accepted_and_answered_like_scaled_audio(triton: TritonServer) -> None:
    """The amplitude limit (32768) lets int16 values through: normalisation makes them harmless."""
    url = triton.endpoints.grpc_url
    scaled = np.clip(clip(1.0, seed=7, amplitude=0.3), -1, 1)
    pcm = np.round(scaled * 32767).astype(np.float32)
    pcm[0, 0] = -32768.0  # the limit itself is inside
    np.testing.assert_allclose(infer(url, pcm), infer(url, pcm / 32768), atol=1e-5)


def send_together(
    url: str, items: list[tuple[npt.NDArray[np.float32], str, str]]
) -> list[npt.NDArray[np.float32] | Exception]:
    """Release every request at the same instant so the dynamic batcher puts them in one execution."""
    from tritonclient.utils import InferenceServerException

    barrier = threading.Barrier(len(items))

    def one(item: tuple[npt.NDArray[np.float32], str, str]) -> npt.NDArray[np.float32] | Exception:
        array, model, name = item
        raw_client(url).is_server_live()  # connect before the barrier
        barrier.wait(timeout=60)
        try:
            return infer(url, array, model=model, name=name)
        except InferenceServerException as error:
            refused: Exception = error  # tritonclient is untyped: name the type the caller gets
            return refused

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items))


@pytest.mark.parametrize(
    ("model", "name", "bad", "pattern"),
    [
        ("emotion", "audio", with_samples({3: np.nan}), "must be finite"),
        ("emotion", "audio", clip(0.05), "too short"),
        ("classifier", "waveform", np.zeros((1, 399), np.float32), "too short"),
        ("classifier", "waveform", with_samples({0: np.inf}), "must be finite"),
    ],
    ids=["ensemble-nan", "ensemble-short", "classifier-short", "classifier-inf"],
)
def test_one_bad_request_does_not_harm_its_batch(
    triton: TritonServer,
    stubs: tuple[StubProcess, ...],
    good_answer: npt.NDArray[np.float32],
    request: pytest.FixtureRequest,
    model: str,
    name: str,
    bad: npt.NDArray[np.float32],
    pattern: str,
) -> None:
    """Seven good clips of different lengths and one bad one, released together, several rounds.

    Straight at the classifier (reachable without the ensemble), the bad clip shares the execution
    with the good ones; through the ensemble, the preprocess refuses it before the classifier.
    """
    url = triton.endpoints.grpc_url
    # Through the ensemble the bad clip never reaches the classifier; straight at the classifier it
    # is one of the batch (Triton counts a request answered with an error as executed).
    executed = BATCH - 1 if model == "emotion" else BATCH
    good = [clip(0.3 + 0.7 * i, seed=100 + i) for i in range(BATCH - 1)]
    if model == "classifier":
        good = [normalise(g[0], do_normalize=True)[None, :] for g in good]
    alone = [infer(url, g, model=model, name=name) for g in good]
    one_execution = 0
    rounds = 4
    for round_ in range(rounds):
        position = round_ % BATCH
        items = [(g, model, name) for g in good]
        items.insert(position, (bad, model, name))
        before = model_counts(url, "classifier")
        results = send_together(url, items)
        counts = counts_after(url, "classifier", before, successes=executed)
        refused = results.pop(position)
        assert isinstance(refused, Exception), "the bad clip was served"
        assert refused.status() == INVALID and pattern in refused.message(), refused  # type: ignore[attr-defined]
        for got, expected in zip(results, alone, strict=True):
            assert not isinstance(got, Exception), f"a good neighbour of the bad clip failed: {got}"
            np.testing.assert_allclose(got, expected, atol=1e-5)
        assert counts.successes == executed
        one_execution += counts.executions == 1
    print(f"{model}: {one_execution} of {rounds} rounds ran all {executed} requests in one classifier execution")
    report(
        "bad input (server)",
        f"1 bad among {BATCH} sent together: {request.node.callspec.id}",
        tried=rounds,
        as_expected=rounds,
        note=f"{one_execution}/{rounds} rounds in one execution",
    )
    assert one_execution >= 1, "the requests never shared a classifier execution"
    still_serves(triton, stubs, good_answer)


def test_preprocess_alone_refuses_with_the_same_messages(triton: TritonServer) -> None:
    url = triton.endpoints.grpc_url
    error = refusal(url, with_samples({0: 5e4}), model="preprocess", output="waveform")
    assert error.status() == INVALID, error.message()
    assert "amplitude limit of 32768" in error.message()
    normalised = infer(url, GOOD, model="preprocess", output="waveform")
    np.testing.assert_allclose(normalised, normalise(GOOD[0], do_normalize=True), atol=1e-6)
