"""Bad input straight at the server with raw tritonclient, bypassing every check of the SDK.

Each bad request must come back INVALID_ARGUMENT with a message that names the problem and the
limit; afterwards a good request must still be served, by the very same stub processes (a crashed
stub would be replaced by nothing: see test_hardening_faults). Requests sent together with a bad
neighbour, so that they share an execution, must get the answers they get alone.

Every test runs against both classifier runtimes (`served`): the cpu target's Python runner and the
production gpu target's libtorch backend. Straight at the libtorch classifier, which can only fail
a whole batch, a clip the model cannot compute gets the defined all-zero answer instead of an error
(build/emotion_build/model/served_classifier.py, docs/hardening.md). No error text carries a build path.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from triton_probes import (
    SAMPLE_RATE,
    classifier_runtime,
    clip,
    counts_after,
    infer,
    infer_rows,
    model_counts,
    raw_client,
    refusal,
    report,
    settled_counts,
    tensor,
)

from emotion_build.repository.description import CLASSIFIER_OUTPUTS
from emotion_build.server.launcher import TritonServer
from emotion_build.server.processes import StubProcess
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


BUILD_PATHS = (str(Path(__file__).resolve().parents[1]), sys.prefix, "site-packages")
"""What an error text must not carry: TorchScript tracebacks used to quote the export machine's files."""


def clean(message: str) -> bool:
    return not any(path in message for path in BUILD_PATHS) and re.search(r"\.py\(\d+\)", message) is None


@pytest.fixture(scope="module")
def stubs(served: TritonServer) -> Iterator[tuple[StubProcess, ...]]:
    """The stub processes before the first bad request; every test checks they are the same after.
    The libtorch classifier runs inside tritonserver itself, so there only the preprocess (and the
    live-audio model) have stubs."""
    before = served.python_stubs()
    runner = classifier_runtime(served.endpoints.grpc_url) == "python"
    expected = {"preprocess", "classifier", "stream"} if runner else {"preprocess", "stream"}
    assert {stub.model for stub in before} == expected
    yield before
    assert served.python_stubs() == before


@pytest.fixture(scope="module")
def good_answer(served: TritonServer) -> npt.NDArray[np.float32]:
    return infer(served.endpoints.grpc_url, GOOD)


def still_serves(served: TritonServer, stubs: tuple[StubProcess, ...], good_answer: npt.NDArray[np.float32]) -> None:
    assert served.running
    np.testing.assert_allclose(infer(served.endpoints.grpc_url, GOOD), good_answer, atol=1e-6)
    assert served.python_stubs() == stubs, "a stub process died or was replaced"


@pytest.mark.parametrize(
    ("array", "datatype", "name", "pattern"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_with_the_problem_and_the_limit(
    served: TritonServer,
    stubs: tuple[StubProcess, ...],
    good_answer: npt.NDArray[np.float32],
    request: pytest.FixtureRequest,
    array: npt.NDArray[Any],
    datatype: str,
    name: str,
    pattern: str,
) -> None:
    url = served.endpoints.grpc_url
    before = settled_counts(url, "classifier")  # the previous test's good request may still be counted
    error = refusal(url, array, datatype=datatype, name=name)
    ok = error.status() == INVALID and re.search(pattern, error.message()) is not None and clean(error.message())
    report("bad input (server)", request.node.callspec.id, tried=1, as_expected=int(ok))
    assert ok, f"{error.status()}: {error.message()}"
    assert model_counts(url, "classifier") == before, "a refused clip reached the classifier"
    still_serves(served, stubs, good_answer)


NORMALISED = normalise(clip(31.0, seed=5)[0], do_normalize=True)[None, :]
"""What the classifier takes: a normalised waveform (long enough to cut every length below from)."""
ZERO_ROW = "the all-zero answer"
ANSWERED = "answered like any clip"


@dataclasses.dataclass(frozen=True, slots=True)
class ClassifierCase:
    """A request straight at the classifier and what each runtime gives it."""

    id: str
    array: npt.NDArray[Any]
    refused_by_runner: str
    """The pattern of the Python runner's INVALID_ARGUMENT message."""
    libtorch: str | None
    """ZERO_ROW, ANSWERED, or None: Triton core refuses it before either runtime, as the runner's pattern says."""
    datatype: str = "FP32"
    name: str = "waveform"


CLASSIFIER_CASES = [
    ClassifierCase("empty", np.zeros((1, 0), np.float32), r"too short: 0\.000 s \(0 samples", ZERO_ROW),
    ClassifierCase("one-sample", NORMALISED[:, :1], r"too short: 0\.000 s \(1 samples", ZERO_ROW),
    ClassifierCase("below-receptive-field", NORMALISED[:, :399], r"too short: .*\(399 samples", ZERO_ROW),
    ClassifierCase(
        "below-minimum-duration", NORMALISED[:, :1000], r"too short: .*\(1000 samples.*minimum is 0\.100 s", ANSWERED
    ),
    ClassifierCase("too-long", NORMALISED[:, : MAX_SAMPLES + 1], r"too long: 30\.000 s \(480001", ZERO_ROW),
    ClassifierCase("nan", with_samples({100: np.nan}), r"must be finite: found 1 NaN and 0 inf", ZERO_ROW),
    ClassifierCase("-inf", with_samples({5: -np.inf}), r"must be finite: found 0 NaN and 1 inf", ZERO_ROW),
    ClassifierCase(
        "amplitude-3e38",
        np.full((1, SAMPLE_RATE), 3e38, np.float32),
        r"not a waveform: 16000 of 16000 samples exceed the amplitude limit of 32768",
        ZERO_ROW,
    ),
    ClassifierCase(
        "int64",
        np.zeros((1, SAMPLE_RATE), np.int64),
        r"data-type is 'INT64', but model 'classifier' expects 'FP32'",
        None,
        datatype="INT64",
    ),
    ClassifierCase("rank-1", np.zeros(SAMPLE_RATE, np.float32), rf"batch-size must be <= {BATCH}", None),
    ClassifierCase("rank-3", np.zeros((1, 1, SAMPLE_RATE), np.float32), r"unexpected shape for input 'waveform'", None),
    ClassifierCase("nine-clips", NORMALISED[:, :9].reshape(9, 1), rf"batch-size must be <= {BATCH}", None),
    ClassifierCase(
        "wrong-input-name", GOOD, r"unexpected inference input 'audio' for model 'classifier'", None, name="audio"
    ),
]


def classifier_outputs(url: str, case: ClassifierCase) -> list[npt.NDArray[Any]]:
    response = raw_client(url).infer(
        "classifier", [tensor(case.array, name=case.name, datatype=case.datatype)], client_timeout=60
    )
    return [response.as_numpy(output) for output in CLASSIFIER_OUTPUTS]


@pytest.mark.parametrize("case", CLASSIFIER_CASES, ids=[case.id for case in CLASSIFIER_CASES])
def test_bad_input_straight_at_the_classifier_is_refused_or_gets_the_defined_answer(
    served: TritonServer,
    stubs: tuple[StubProcess, ...],
    good_answer: npt.NDArray[np.float32],
    request: pytest.FixtureRequest,
    case: ClassifierCase,
) -> None:
    """The classifier is reachable without the ensemble. The Python runner checks each clip as the
    preprocess does; the libtorch classifier answers what the model cannot compute with zeros."""
    url = served.endpoints.grpc_url
    runner = classifier_runtime(url) == "python"
    expected = case.refused_by_runner if runner or case.libtorch is None else case.libtorch
    if expected == ZERO_ROW:
        outputs = classifier_outputs(url, case)
        ok, got = all(output.shape[0] == 1 and not output.any() for output in outputs), f"{outputs}"
    elif expected == ANSWERED:
        probabilities = classifier_outputs(url, case)[CLASSIFIER_OUTPUTS.index("probabilities")]
        ok, got = bool(np.isfinite(probabilities).all() and abs(probabilities.sum() - 1) < 1e-5), f"{probabilities}"
    else:
        error = refusal(url, case.array, model="classifier", name=case.name, datatype=case.datatype)
        ok = error.status() == INVALID and re.search(expected, error.message()) is not None and clean(error.message())
        got = f"{error.status()}: {error.message()}"
    note = expected if expected in (ZERO_ROW, ANSWERED) else "refused"
    report("bad input (classifier)", request.node.callspec.id, tried=1, as_expected=int(ok), note=note)
    assert ok, got
    still_serves(served, stubs, good_answer)


def test_a_request_without_its_input_or_with_a_short_payload_is_refused(
    served: TritonServer, stubs: tuple[StubProcess, ...], good_answer: npt.NDArray[np.float32]
) -> None:
    from tritonclient.utils import InferenceServerException

    url = served.endpoints.grpc_url
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
    still_serves(served, stubs, good_answer)


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
    """Release every request at the same instant so the dynamic batcher puts them in one execution;
    each result holds every row of its request's probabilities."""
    from tritonclient.utils import InferenceServerException

    barrier = threading.Barrier(len(items))

    def one(item: tuple[npt.NDArray[np.float32], str, str]) -> npt.NDArray[np.float32] | Exception:
        array, model, name = item
        raw_client(url).is_server_live()  # connect before the barrier
        barrier.wait(timeout=60)
        try:
            return infer_rows(url, array, model=model, name=name)
        except InferenceServerException as error:
            refused: Exception = error  # tritonclient is untyped: name the type the caller gets
            return refused

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items))


TWO_CLIPS = np.concatenate([NORMALISED[:, 500:16500], NORMALISED[:, 40000:56000]])
"""One request of two 1 s clips: libtorch answers it with two rows; the runner takes one clip a request."""


@pytest.mark.parametrize(
    ("model", "name", "bad", "pattern", "libtorch_answers"),
    [
        ("emotion", "audio", with_samples({3: np.nan}), "must be finite", False),
        ("emotion", "audio", clip(0.05), "too short", False),
        ("classifier", "waveform", np.zeros((1, 399), np.float32), "too short", True),
        ("classifier", "waveform", with_samples({0: np.inf}), "must be finite", True),
        ("classifier", "waveform", TWO_CLIPS, "shape [1, samples]", True),
    ],
    ids=["ensemble-nan", "ensemble-short", "classifier-short", "classifier-inf", "classifier-two-clips"],
)
def test_one_bad_request_does_not_harm_its_batch(
    served: TritonServer,
    stubs: tuple[StubProcess, ...],
    good_answer: npt.NDArray[np.float32],
    request: pytest.FixtureRequest,
    model: str,
    name: str,
    bad: npt.NDArray[np.float32],
    pattern: str,
    libtorch_answers: bool,
) -> None:
    """Good clips of different lengths and one bad request, released together, several rounds.

    Straight at the classifier (reachable without the ensemble), the bad request shares the execution
    with the good ones; through the ensemble, the preprocess refuses it before the classifier. The
    libtorch classifier answers it instead: zeros for a clip it cannot compute, and one row per clip
    for a request of several, the same rows it gets alone.
    """
    url = served.endpoints.grpc_url
    answered = libtorch_answers and classifier_runtime(url) == "libtorch"
    good = [clip(0.3 + 0.7 * i, seed=100 + i) for i in range(BATCH - bad.shape[0])]
    if model == "classifier":
        good = [normalise(g[0], do_normalize=True)[None, :] for g in good]
    alone = [infer_rows(url, g, model=model, name=name) for g in good]
    if answered:
        bad_alone = infer_rows(url, bad, model=model, name=name)
        each = np.concatenate([infer_rows(url, row[None, :], model=model, name=name) for row in bad])
        np.testing.assert_allclose(bad_alone, each, atol=1e-5)  # one row per clip, each the clip's own
        assert bad.shape[0] > 1 or not bad_alone.any(), f"not the all-zero answer: {bad_alone}"
    # Through the ensemble the bad clip never reaches the classifier; straight at the classifier it
    # is one of the batch (Triton counts a request answered with an error as executed).
    executed = len(good) if model == "emotion" else len(good) + 1
    one_execution = 0
    rounds = 4
    for round_ in range(rounds):
        position = round_ % (len(good) + 1)
        items = [(g, model, name) for g in good]
        items.insert(position, (bad, model, name))
        before = settled_counts(url, "classifier")  # the request just before may not be counted yet
        results = send_together(url, items)
        counts = counts_after(url, "classifier", before, successes=executed)
        bad_result = results.pop(position)
        if answered:
            assert not isinstance(bad_result, Exception), f"the libtorch classifier failed: {bad_result}"
            np.testing.assert_allclose(bad_result, bad_alone, atol=1e-5)
        else:
            assert isinstance(bad_result, Exception), "the bad clip was served"
            message = bad_result.message()  # type: ignore[attr-defined]
            assert bad_result.status() == INVALID and pattern in message and clean(message), bad_result  # type: ignore[attr-defined]
        for got, expected in zip(results, alone, strict=True):
            assert not isinstance(got, Exception), f"a good neighbour of the bad clip failed: {got}"
            np.testing.assert_allclose(got, expected, atol=1e-5)
        assert counts.successes == executed
        one_execution += counts.executions == 1
    print(f"{model}: {one_execution} of {rounds} rounds ran all {executed} requests in one classifier execution")
    report(
        "bad input (server)",
        f"1 bad among {executed} sent together: {request.node.callspec.id}",
        tried=rounds,
        as_expected=rounds,
        note=f"{one_execution}/{rounds} rounds in one execution" + (", answered" if answered else ""),
    )
    assert one_execution >= 1, "the requests never shared a classifier execution"
    still_serves(served, stubs, good_answer)


def test_preprocess_alone_refuses_with_the_same_messages(triton: TritonServer) -> None:
    url = triton.endpoints.grpc_url
    error = refusal(url, with_samples({0: 5e4}), model="preprocess", output="waveform")
    assert error.status() == INVALID, error.message()
    assert "amplitude limit of 32768" in error.message()
    normalised = infer(url, GOOD, model="preprocess", output="waveform")
    np.testing.assert_allclose(normalised, normalise(GOOD[0], do_normalize=True), atol=1e-6)
