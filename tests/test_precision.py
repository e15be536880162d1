"""The precision choice and the reduced-precision gate, as pure functions (no server, no espeak-ng)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_build.export.precision import GATE_LIMITS, GateReport, choose_precision, run_gate
from emotion_build.triton_models.cpu_features import cpu_flags, emulation_warning, native_bf16_flags
from emotion_build.triton_models.waveform import FloatArray

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx512f", "amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni"})
ICE_LAKE = frozenset({"avx2", "avx512f", "avx512_vnni"})
BF16_ONLY = frozenset({"avx512f", "avx512_bf16"})


def test_auto_takes_int8_then_bf16_for_the_cpu_target_only_where_the_cpu_computes_them() -> None:
    zen4 = choose_precision("auto", "cpu", ZEN4)
    assert (zen4.precision, zen4.automatic) == ("int8", True)
    assert "avx512_vnni" in zen4.reason and "avx512_bf16" in zen4.reason
    sapphire = choose_precision("auto", "cpu", SAPPHIRE_RAPIDS)
    assert sapphire.precision == "int8" and "amx_int8" in sapphire.reason and "amx_bf16" in sapphire.reason
    bf16_only = choose_precision("auto", "cpu", BF16_ONLY)
    assert bf16_only.precision == "bf16" and "avx512_bf16" in bf16_only.reason
    older = choose_precision("auto", "cpu", ICE_LAKE)  # int8 products but no bf16 around them
    assert older.precision == "fp32" and "no bf16 instructions" in older.reason
    assert choose_precision("auto", "cpu", frozenset()).precision == "fp32"


def test_auto_falls_back_from_int8_to_bf16_to_fp32() -> None:
    int8 = choose_precision("auto", "cpu", ZEN4)
    bf16 = int8.fallback("int8 failed the precision gate")
    assert (bf16.precision, bf16.automatic) == ("bf16", True) and bf16.reason.endswith("int8 failed the precision gate")
    assert bf16.fallback("no speech").precision == "fp32"


def test_auto_keeps_the_gpu_targets_fp32_and_explicit_requests_are_kept() -> None:
    for target in ("gpu", "gpu-python"):
        assert choose_precision("auto", target, ZEN4).precision == "fp32"
        assert choose_precision("fp16", target, ICE_LAKE).precision == "fp16"
    explicit = choose_precision("bf16", "cpu", ICE_LAKE)  # the operator's call, even where it is emulated
    assert (explicit.precision, explicit.automatic) == ("bf16", False)
    assert choose_precision("fp32", "cpu", ZEN4).precision == "fp32"
    with pytest.raises(ValueError, match="GPU targets"):
        choose_precision("fp16", "cpu", ZEN4)
    with pytest.raises(ValueError, match="int8 is for the cpu target"):
        choose_precision("int8", "gpu", ZEN4)


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx512_bf16 avx512_vnni\n\n")
    assert native_bf16_flags(cpu_flags(cpuinfo)) == ("avx512_bf16",)
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert native_bf16_flags(SAPPHIRE_RAPIDS) == ("avx512_bf16", "amx_bf16")


def test_the_emulation_warning_names_the_instructions_and_the_way_out() -> None:
    warning = emulation_warning("bfloat16", ICE_LAKE)
    assert warning is not None and "avx512_bf16" in warning and "--dtype fp32" in warning
    assert emulation_warning("bfloat16", ZEN4) is None
    assert emulation_warning("float32", ICE_LAKE) is None
    no_vnni = emulation_warning("int8+bfloat16", BF16_ONLY)
    assert no_vnni is not None and "avx512_vnni" in no_vnni and "avx512_bf16" not in no_vnni
    assert emulation_warning("int8+bfloat16", ZEN4) is None


def clips_of(lengths: Sequence[int]) -> list[FloatArray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) for n in lengths]


class Linear:
    """A stand-in classifier: logits are fixed per clip (its length), plus what `shift` adds."""

    def __init__(self, shift: float = 0.0, flip_batched: bool = False) -> None:
        self.shift, self.flip_batched = shift, flip_batched

    def logits(self, length: int) -> torch.Tensor:
        return torch.tensor([[length % 7, 3.0, 1.0, 0.5]]) / 2

    def reference(self, clip: FloatArray) -> torch.Tensor:
        return self.logits(clip.size)

    def module(self, flat: FloatArray, ends: Sequence[int]) -> torch.Tensor:
        lengths = np.diff([0, *ends])
        rows = torch.cat([self.logits(int(n)) for n in lengths]) + self.shift
        if self.flip_batched and len(lengths) > 1:
            rows = rows.flip(-1) * 3
        return rows


def gate(stand_in: Linear) -> GateReport:
    return run_gate(
        stand_in.module,
        stand_in.reference,
        clips_of([1000 + 37 * k for k in range(12)]),
        precision="bf16",
        sample_rate=16000,
        source="test",
    )


def test_the_gate_passes_a_faithful_module_and_reports_every_figure() -> None:
    report = run_gate(
        Linear().module,
        Linear().reference,
        clips_of([1600, 3200, 800]),
        precision="bf16",
        sample_rate=16000,
        source="t",
    )
    assert report.passed and report.top1_agreement == 1.0
    assert report.max_abs_prob_diff == report.batch_invariance == 0.0
    assert report.audio_s == pytest.approx(0.35)
    assert report.record()["passed"] is True and report.record()["limits"] == {
        "max_abs_prob_diff": GATE_LIMITS["bf16"].max_abs_prob_diff,
        "min_top1_agreement": 0.99,
    }


def test_the_gate_fails_on_probability_drift_and_on_labels_that_change_only_in_batches() -> None:
    # A constant added to every logit moves no probability: softmax does not see it.
    assert gate(Linear(shift=5.0)).passed
    flipped = gate(Linear(flip_batched=True))
    assert not flipped.passed
    assert flipped.top1_agreement_alone == 1.0 and flipped.top1_agreement_batched < 0.99
    assert flipped.batch_invariance > 0.1


def test_fp32_is_not_gated_by_probabilities() -> None:
    with pytest.raises(ValueError, match="check_parity"):
        run_gate(Linear().module, Linear().reference, clips_of([800]), precision="fp32", sample_rate=16000, source="t")


def test_a_near_tie_that_flips_is_not_a_disagreement_but_is_recorded() -> None:
    """fp32 puts two classes 1e-4 apart on one clip; a 1e-3 nudge flips it, well inside the Δprob limit."""

    def reference(clip: FloatArray) -> torch.Tensor:
        second = 2.0 - 4e-4 if clip.size == 800 else 1.0
        return torch.tensor([[2.0, second, 0.0, -1.0]])

    def module(flat: FloatArray, ends: Sequence[int]) -> torch.Tensor:
        rows = torch.cat([reference(np.zeros(n, np.float32)) for n in np.diff([0, *ends])])
        rows[:, 1] += 1e-3
        return rows

    report = run_gate(module, reference, clips_of([800, 900, 1000]), precision="bf16", sample_rate=16000, source="t")
    assert report.ties == 1 and report.min_top1_margin < 1e-3
    assert report.top1_agreement_alone == report.top1_agreement_batched == 1.0  # the two decisive clips
    assert report.top1_agreement_all == pytest.approx(2 / 3) and report.passed
    assert report.max_abs_prob_diff < 1e-3


def test_the_gate_says_how_many_labels_it_tested_and_a_gate_of_ties_tests_none() -> None:
    """Every clip a dead heat under fp32: agreement defaults to 1.0, and top1_tested says it is of nothing."""

    def tie(clip: FloatArray) -> torch.Tensor:
        return torch.zeros(1, 4)

    def module(flat: FloatArray, ends: Sequence[int]) -> torch.Tensor:
        return torch.zeros(len(ends), 4)

    report = run_gate(module, tie, clips_of([800, 900, 1000]), precision="bf16", sample_rate=16000, source="t")
    assert (report.top1_tested, report.ties) == (0, 3)
    assert report.record()["top1_tested"] == 0 and "of 0 decisive clips" in report.summary()
    assert gate(Linear()).top1_tested + gate(Linear()).ties == 12 and gate(Linear()).top1_tested > 0
