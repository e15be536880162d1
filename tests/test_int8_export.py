"""int8 products for the cpu target: GPTQ's rounding, batch independence, the export's gate and the
auto choice's fallbacks (int8 -> bf16 -> fp32), and a served int8 model against eager fp32."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from repositories import export_cpu_repository
from test_bf16_export import export_tiny, provenance_of, served_against_eager
from torch import nn

import emotion_build.export.precision
from emotion_build.export.calibration import split_calibration
from emotion_build.export.pipeline import ExportError, describe, export
from emotion_build.export.precision import GATE_LIMITS, GateLimits
from emotion_build.export.speech import SpeechUnavailableError
from emotion_build.model.int8_products import Int8Linear, gptq_round
from emotion_build.model.loading import LoadedModel
from emotion_build.repository.description import BatchingSettings
from emotion_build.server.launcher import TritonServer

RATE = 16000
INT8_LIMIT = GATE_LIMITS["int8"].max_abs_prob_diff
WITH_INT8 = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})


def correlated_inputs(basis: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """Frames that vary along a few directions (`basis`) plus a little noise, as a layer's inputs do:
    the co-variation GPTQ's rounding exploits (on near-isotropic inputs it gains nothing)."""
    generator = torch.Generator().manual_seed(seed)
    frames: torch.Tensor = torch.randn(rows, basis.shape[0], generator=generator) @ basis
    return frames + 0.05 * torch.randn(rows, basis.shape[1], generator=generator)


def test_gptq_moves_a_layers_outputs_less_than_rounding_to_nearest() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 128, generator=generator)
    basis = torch.randn(16, 128, generator=generator)
    calibration, held_out = correlated_inputs(basis, 2000, seed=1), correlated_inputs(basis, 500, seed=2)
    levels, scale = gptq_round(weight, (calibration.t() @ calibration).double())
    assert levels.abs().max() <= 127 and torch.equal(levels, levels.round())
    nearest_scale = weight.abs().amax(1) / 127
    nearest = torch.round(weight / nearest_scale[:, None]) * nearest_scale[:, None]
    exact = held_out @ weight.t()
    gptq_error = float((held_out @ (levels * scale[:, None]).t() - exact).pow(2).mean())
    nearest_error = float((held_out @ nearest.t() - exact).pow(2).mean())
    print(f"held-out output MSE: GPTQ {gptq_error:.3g}, nearest {nearest_error:.3g}")
    assert gptq_error < 0.3 * nearest_error


def test_an_int8_products_row_does_not_depend_on_its_batch() -> None:
    linear = nn.Linear(64, 32)
    levels, scale = gptq_round(linear.weight.detach(), torch.eye(64, dtype=torch.float64))
    int8 = Int8Linear(levels, scale, linear.bias, torch.bfloat16)
    frames = torch.randn(9, 64).bfloat16()
    frames[4] *= 1000  # a loud batch-mate must not change anyone else's scale
    together = int8(frames)
    for row in range(len(frames)):
        assert torch.equal(int8(frames[row : row + 1]), together[row : row + 1])
    with torch.no_grad():
        reference = linear(frames.float())
    relative = (together.float() - reference).abs().max() / reference.abs().max()
    assert together.dtype == torch.bfloat16 and float(relative) < 0.03


def test_auto_takes_int8_where_the_cpu_has_vnni_and_records_its_gate(
    tiny: LoadedModel, tmp_path: Path, few_clips: Any
) -> None:
    provenance = export_tiny(tiny, tmp_path / "repo", dtype="auto", machine_flags=WITH_INT8, gate_speech=few_clips)
    assert provenance.dtype == "int8+bfloat16" and "avx512_vnni" in provenance.precision_choice
    gate = provenance.gate
    assert gate is not None and gate["passed"] is True and gate["precision"] == "int8"
    drift = gate["max_abs_prob_diff_batched"]
    assert isinstance(drift, float) and 0 < drift <= INT8_LIMIT
    module = torch.jit.load(str(tmp_path / "repo" / "classifier" / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    dtypes = {buffer.dtype for buffer in module.buffers()}
    assert torch.int8 in dtypes, dtypes


def test_a_failed_int8_gate_fails_an_explicit_int8_and_sends_auto_to_bf16(
    tiny: LoadedModel, tmp_path: Path, few_clips: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(emotion_build.export.precision.GATE_LIMITS, "int8", GateLimits(0.0, 1.0))  # nothing passes
    with pytest.raises(ExportError, match=r"int8 TorchScript fails the precision gate.*--dtype bf16"):
        export_tiny(tiny, tmp_path / "explicit", dtype="int8", gate_speech=few_clips)
    fallback = export_tiny(tiny, tmp_path / "auto", dtype="auto", machine_flags=WITH_INT8, gate_speech=few_clips)
    assert fallback.dtype == "bfloat16" and "int8 failed the precision gate" in fallback.precision_choice


@pytest.fixture(scope="module")
def int8_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    output = tmp_path_factory.mktemp("int8") / "model_repository"
    repository = export_cpu_repository(tiny_model_dir, output, "--dtype", "int8", "--classifier-instances", "1")
    assert provenance_of(repository).dtype == "int8+bfloat16"
    with TritonServer(repository) as server:
        yield server


def test_served_int8_matches_eager_fp32_within_the_gate(
    int8_server: TritonServer, hf_classifier: tuple[Any, Any], few_clips: Any
) -> None:
    clips, _ = few_clips
    weights_dtype, worst = served_against_eager(int8_server, hf_classifier, clips)
    assert weights_dtype == "int8+bfloat16"
    assert 0 < worst <= INT8_LIMIT


def test_int8_rounds_on_some_of_the_operators_files_and_gates_on_the_others(
    tiny: LoadedModel, tmp_path: Path, speech_clips: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No espeak-ng needed with --gate-audio: calibration and gate take disjoint files."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on it
    said: list[str] = []
    provenance = export(
        tiny,
        tmp_path / "repo",
        "cpu",
        describe(tiny, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0),
        dtype="int8",
        gate_speech=(speech_clips, "five files"),
        progress=said.append,
    ).provenance
    gate = provenance.gate
    assert gate is not None and gate["passed"] is True
    assert gate["clips"] == 3 and str(gate["source"]).startswith("five files; 2 others")
    assert any("rounded on" in line and "of your speech" in line for line in said)  # 2 short files: little
    assert any("top-1 check tested" in line for line in said)  # 3 gate clips: few labels
    kept, rest = split_calibration(speech_clips)
    assert [len(kept), len(rest)] == [2, 3]
    assert not {id(clip) for clip in kept} & {id(clip) for clip in rest}
    with pytest.raises(SpeechUnavailableError, match="at least 3 files"):
        split_calibration(speech_clips[:2])
