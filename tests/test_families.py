"""Every served family and layout (tests/families.py), as a user meets it: a checkpoint saved by
save_pretrained -> `python -m emotion_build export --model DIR --target cpu` -> a real tritonserver
-> the SDK, against eager Hugging Face on espeak-ng speech; batching through the server for a
layer-norm (stable) model and a WavLM one; and the traced module's parity in both conv forms.

One server per variant (the served model names are fixed), started once for all of its tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from conftest import TEST_BATCHING
from families import VARIANTS, Variant, save_checkpoint
from repositories import export_cpu_repository, export_repository
from speech import espeak_clips
from transformers import AutoModelForAudioClassification, Wav2Vec2FeatureExtractor
from triton_probes import alone_then_together

from emotion_build.export.parity import PARITY_TOLERANCE, check_parity
from emotion_build.export.pipeline import describe, export
from emotion_build.export.precision import Precision
from emotion_build.export.tracing import trace
from emotion_build.model.families import FAMILIES, random_config
from emotion_build.model.loading import load_pretrained, random_model
from emotion_build.repository.description import BatchingSettings, Provenance, Target
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer
from emotion_client import EmotionClient

RATE = 16000
SPEECH_S = (0.7, 2.5, 6.0)
BATCHED_VARIANTS = ("wav2vec2-large", "wavlm-base")
"""A stable-layer-norm (layer-norm conv) model and a WavLM one: the masking the base tests do not reach."""
CONCURRENCY = 8  # TEST_BATCHING's max_batch_size
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")
"""Eager WavLM hands torch a bool key-padding mask beside its float position bias (transformers' own code)."""


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name: str = request.param
    return name, save_checkpoint(VARIANTS[name], tmp_path_factory.mktemp(f"ckpt-{name}"))


@pytest.fixture(scope="module")
def variant_repository(variant_dir: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    name, directory = variant_dir
    return export_cpu_repository(directory, tmp_path_factory.mktemp(f"repo-{name}") / "repo", *TEST_BATCHING)


@pytest.fixture(scope="module")
def variant_server(variant_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(variant_repository) as server:
        yield server


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[npt.NDArray[np.float32]]:
    return espeak_clips(tmp_path_factory.mktemp("family-speech"), SPEECH_S, sample_rate=RATE)


def test_export_loads_the_class_the_config_names_and_checks_parity_in_the_gpu_conv_form(
    variant_dir: tuple[str, Path], variant_repository: Path
) -> None:
    name, directory = variant_dir
    variant: Variant = VARIANTS[name]
    provenance = Provenance.from_json((variant_repository / "classifier" / "1" / "export.json").read_text())
    assert provenance.max_abs_logit_diff is not None and provenance.max_abs_logit_diff <= PARITY_TOLERANCE
    loaded = load_pretrained(str(directory))
    assert type(loaded.model).__name__ == variant.class_name
    assert bool(getattr(loaded.model.config, "do_stable_layer_norm", False)) == (variant.layout == "stable")
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30)
    assert description.labels == variant.labels
    # The cpu export above checked the native convolutions; the GPU targets' matrix products here.
    report = check_parity(trace(loaded, RATE, conv_form="matmul"), loaded, description, [1600, 16000, 77777])
    print(
        f"{name} matmul: max |Δlogit| alone {report.max_abs_logit_diff:.2e}, "
        f"batched {report.batched_max_abs_logit_diff:.2e}"
    )
    assert report.max_abs_logit_diff <= PARITY_TOLERANCE
    assert report.batched_max_abs_logit_diff <= PARITY_TOLERANCE
    assert not report.non_finite


def served_drift(directory: Path, server: TritonServer, speech: list[npt.NDArray[np.float32]]) -> float:
    """Largest |Δprobability| of the SDK's answers against eager HF on `speech`; the labels and top class must agree."""
    model = AutoModelForAudioClassification.from_pretrained(directory).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    with EmotionClient(server.endpoints.grpc_url, timeout_s=60) as client:
        info = client.model_info()
        results = [client.classify(clip, sample_rate=RATE) for clip in speech]
    assert info.labels == tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    worst = 0.0
    for clip, result in zip(speech, results, strict=True):
        inputs = extractor(clip, sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(model(**inputs).logits, dim=-1)[0].numpy()
        by_label = {entry.label: entry.score for entry in result.scores}
        got = np.array([by_label[label] for label in info.labels])
        worst = max(worst, float(np.abs(got - expected).max()))
        assert result.label == info.labels[int(expected.argmax())]
    return worst


def test_served_speech_matches_eager_hf(
    variant_dir: tuple[str, Path], variant_server: TritonServer, speech: list[npt.NDArray[np.float32]]
) -> None:
    name, directory = variant_dir
    worst = served_drift(directory, variant_server, speech)
    print(f"{name}: served vs eager HF on {len(speech)} espeak-ng clips, max |Δprob| {worst:.2e}")
    assert worst <= 1e-4


def test_the_production_libtorch_classifier_matches_eager_hf(
    variant_dir: tuple[str, Path],
    speech: list[npt.NDArray[np.float32]],
    libtorch_backends: Path,
    tmp_path: Path,
) -> None:
    """The gpu target's repository (matrix-product convs, Triton's libtorch backend) on this CPU."""
    name, directory = variant_dir
    if name not in BATCHED_VARIANTS:
        return  # the same TorchScript as the Python runner's; these two cover its new operations
    repository = export_repository(directory, tmp_path / "repo", "gpu", "--classifier-on-cpu", *TEST_BATCHING)
    with TritonServer(repository, install=find_tritonserver(extra_backends=libtorch_backends)) as server:
        worst = served_drift(directory, server, speech)
    print(f"{name}: libtorch classifier vs eager HF, max |Δprob| {worst:.2e}")
    assert worst <= 1e-4


def test_answers_do_not_move_when_batched_through_the_server(
    variant_dir: tuple[str, Path], variant_server: TritonServer
) -> None:
    name, _ = variant_dir
    if name not in BATCHED_VARIANTS:
        return  # the batching is the same code for every variant; these two cover the masking it varies by
    url = variant_server.endpoints.grpc_url
    rng = np.random.default_rng(5)
    lengths = rng.integers(int(0.3 * RATE), 8 * RATE, size=2 * CONCURRENCY)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    alone, drift, change = alone_then_together(url, clips, CONCURRENCY)
    average = change.inferences / change.executions
    print(f"{name}: max |Δprob| alone vs batched {drift:.2e}, average executed batch {average:.2f}")
    assert change.inferences == len(clips)
    assert average >= 2, f"only {average:.2f} requests per classifier execution"
    assert drift <= 1e-5
    assert np.abs(alone - alone[0]).max() > 1e-3  # the model really tells clips apart


def test_reduced_precision_gates_pass_on_speech(
    variant_dir: tuple[str, Path], speech: list[npt.NDArray[np.float32]], tmp_path: Path
) -> None:
    """bf16 and int8 for the cpu target and fp16 for the gpu one (traced here on the CPU), each through the
    gate on speech (int8 rounds its weights on one of the clips and gates on the other two)."""
    name, directory = variant_dir
    loaded = load_pretrained(str(directory))
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30)
    cases: tuple[tuple[Target, Precision], ...] = (("cpu", "bf16"), ("cpu", "int8"), ("gpu", "fp16"))
    for target, dtype in cases:
        result = export(
            loaded,
            tmp_path / dtype,
            target,
            description,
            dtype=dtype,
            gate_speech=(speech, "three espeak-ng clips"),
            progress=lambda _: None,
            engine="torchscript",
        )
        gate = result.provenance.gate
        gated = len(speech) - (1 if dtype == "int8" else 0)
        assert gate is not None and gate["passed"] is True and gate["clips"] == gated
        print(f"{name} {dtype}: max |Δprob| {result.provenance.max_abs_prob_diff:.2e} against eager fp32")
        assert result.provenance.dtype == {"bf16": "bfloat16", "int8": "int8+bfloat16", "fp16": "float16"}[dtype]


def test_random_init_builds_each_family_and_large_is_the_published_stable_layout() -> None:
    for name, family in FAMILIES.items():
        assert type(random_model("tiny", family=name).model).__name__ == family.class_name
        large = random_config(name, "large", labels=("a", "b"))
        assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
        assert bool(getattr(large, "do_stable_layer_norm", False)) == family.has_stable_layout
        base = random_config(name, "base", labels=("a", "b"))
        assert (base.hidden_size, base.num_hidden_layers) == (768, 12)
        assert not getattr(base, "do_stable_layer_norm", False)
