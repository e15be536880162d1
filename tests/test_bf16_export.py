"""bf16 weights for the cpu target: the speech gate in `export`, the `auto` choice and its fallbacks,
and a bf16 repository served by a real tritonserver against the eager fp32 model."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from repositories import export_cpu_repository
from test_end_to_end import eager_probabilities, in_label_order

import emotion_build.export.precision
from emotion_build.export.pipeline import ExportError, describe, export
from emotion_build.export.precision import GATE_LIMITS, GateLimits
from emotion_build.model.loading import LoadedModel
from emotion_build.repository.description import BatchingSettings, Provenance
from emotion_build.server.launcher import TritonServer
from emotion_build.triton_models.cpu_features import cpu_flags, native_bf16_flags
from emotion_client import EmotionClient

RATE = 16000
BF16_LIMIT = GATE_LIMITS["bf16"].max_abs_prob_diff
WITH_BF16 = frozenset({"avx512f", "avx512_bf16"})
WITHOUT_BF16 = frozenset({"avx2", "avx512f"})


def provenance_of(repository: Path) -> Provenance:
    return Provenance.from_json((repository / "classifier" / "1" / "export.json").read_text())


@pytest.fixture(scope="module")
def bf16_repository(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's tiny checkpoint exported as an operator would, with --dtype bf16 (espeak-ng gate)."""
    output = tmp_path_factory.mktemp("bf16") / "model_repository"
    return export_cpu_repository(tiny_model_dir, output, "--dtype", "bf16", "--classifier-instances", "1")


def test_export_records_the_precision_and_the_gate_on_40_speech_clips(bf16_repository: Path) -> None:
    provenance = provenance_of(bf16_repository)
    assert (provenance.dtype, provenance.precision_choice) == ("bfloat16", "asked for (--dtype)")
    gate = provenance.gate
    assert gate is not None and gate["passed"] is True
    assert gate["clips"] == 40 and gate["source"] == "espeak-ng, 8 voices"
    audio_s = gate["audio_s"]
    assert isinstance(audio_s, float) and 40 <= audio_s <= 400
    for key in ("max_abs_prob_diff_alone", "max_abs_prob_diff_batched"):
        drift = gate[key]
        assert isinstance(drift, float) and 0 < drift <= BF16_LIMIT
    assert gate["top1_agreement_alone"] == gate["top1_agreement_batched"] == 1.0
    weights = torch.jit.load(str(bf16_repository / "classifier" / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    assert {p.dtype for p in weights.parameters()} == {torch.bfloat16}
    assert 'string_value: "bfloat16"' in (bf16_repository / "classifier" / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def bf16_server(bf16_repository: Path) -> Iterator[TritonServer]:
    with TritonServer(bf16_repository) as server:
        yield server


def served_against_eager(
    server: TritonServer, hf_classifier: tuple[Any, Any], clips: list[npt.NDArray[np.float32]]
) -> tuple[str, float]:
    """The served weights' precision and the largest |Δprob| of the served answers against eager fp32,
    every clip's label equal to eager's."""
    with EmotionClient(server.endpoints.grpc_url, timeout_s=60) as client:
        info = client.model_info()
        results = [client.classify(clip, sample_rate=RATE) for clip in clips]
    worst = 0.0
    for clip, result in zip(clips, results, strict=True):
        expected = eager_probabilities(hf_classifier, clip)
        worst = max(worst, float(np.abs(in_label_order(result, info.labels) - expected).max()))
        assert result.label == info.labels[int(expected.argmax())]
    print(f"served {info.weights_dtype} vs eager fp32 on {len(clips)} clips: max |Δprob| {worst:.2e}")
    return info.weights_dtype, worst


def test_served_bf16_matches_eager_fp32_within_the_gate(
    bf16_server: TritonServer, hf_classifier: tuple[Any, Any], speech_clips: list[npt.NDArray[np.float32]]
) -> None:
    weights_dtype, worst = served_against_eager(bf16_server, hf_classifier, speech_clips)
    assert weights_dtype == "bfloat16"
    assert 0 < worst <= BF16_LIMIT


def test_the_runner_reports_whether_bf16_is_emulated_here(bf16_server: TritonServer) -> None:
    with urllib.request.urlopen(bf16_server.endpoints.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    (line,) = [row for row in metrics.splitlines() if row.startswith("emotion_classifier_precision_emulated{")]
    assert 'weights_dtype="bfloat16"' in line
    emulated = not native_bf16_flags(cpu_flags())
    assert line.endswith(" 1" if emulated else " 0")
    assert ("SLOW:" in bf16_server.log_text()) == emulated


def export_tiny(tiny: LoadedModel, output: Path, **options: Any) -> Provenance:
    """TorchScript unless `engine` says otherwise: these tests are of its precisions and gate."""
    description = describe(tiny, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
    options.setdefault("engine", "torchscript")
    return export(tiny, output, "cpu", description, progress=lambda _: None, **options).provenance


def test_auto_follows_the_exporting_cpu(tiny: LoadedModel, tmp_path: Path, few_clips: Any) -> None:
    with_bf16 = export_tiny(tiny, tmp_path / "a", dtype="auto", machine_flags=WITH_BF16, gate_speech=few_clips)
    assert with_bf16.dtype == "bfloat16" and "avx512_bf16" in with_bf16.precision_choice
    assert with_bf16.gate is not None and with_bf16.gate["source"] == "five espeak-ng clips"
    without = export_tiny(tiny, tmp_path / "b", dtype="auto", machine_flags=WITHOUT_BF16)
    assert without.dtype == "float32" and without.gate is None
    assert without.max_abs_logit_diff is not None and without.max_abs_logit_diff <= 1e-4


def test_a_failed_gate_fails_an_explicit_bf16_and_sends_auto_back_to_fp32(
    tiny: LoadedModel, tmp_path: Path, few_clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(emotion_build.export.precision.GATE_LIMITS, "bf16", GateLimits(0.0, 1.0))  # nothing passes
    with pytest.raises(ExportError, match=r"fails the precision gate: max \|Δprob\| .* \(limit 0\).*--dtype fp32"):
        export_tiny(tiny, tmp_path / "explicit", dtype="bf16", gate_speech=few_clips)
    assert not (tmp_path / "explicit").exists()
    fallback = export_tiny(tiny, tmp_path / "auto", dtype="auto", machine_flags=WITH_BF16, gate_speech=few_clips)
    assert fallback.dtype == "float32" and "bf16 failed the precision gate" in fallback.precision_choice


def test_without_espeak_ng_auto_exports_fp32_and_bf16_says_what_to_install(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on it
    with pytest.raises(ExportError, match=r"espeak-ng.*--gate-audio"):
        export_tiny(tiny, tmp_path / "explicit", dtype="bf16")
    fallback = export_tiny(tiny, tmp_path / "auto", dtype="auto", machine_flags=WITH_BF16)
    assert fallback.dtype == "float32" and "no speech to gate bf16 on" in fallback.precision_choice


def test_gate_audio_takes_the_operators_own_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parents[1] / "samples"
    repository = export_cpu_repository(
        tiny_model_dir, tmp_path / "repo", "--dtype", "bf16", "--gate-audio", str(samples)
    )
    gate = provenance_of(repository).gate
    assert gate is not None and gate["clips"] == len(list(samples.glob("*.wav")))
    assert gate["source"] == f"{gate['clips']} files in {samples}"
