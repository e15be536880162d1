"""Which precision the weights are exported in, and the gate a reduced precision must pass on speech.

The served interface is float32 whatever the weights are. fp32 is checked against eager Hugging
Face to 1e-4 in logits (export.check_parity); bf16 and fp16 cannot be, so they are checked on what
matters to a caller instead: on espeak-ng speech (or the operator's own), each clip alone and in
ragged batches, the probabilities may move by at most a limit and the top label may not change,
against the eager fp32 model. The gate's report also says how far a clip's answer moves between
alone and in a batch, which in reduced precision is rounding, not masking (the kernels block the
sums by the batch's shape), and how that compares with the smallest margin between a clip's two
best classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from ..repository.description import Target
from ..triton_models.cpu_features import native_bf16_flags, native_int8_flags
from ..triton_models.ragged import concatenate
from ..triton_models.waveform import FloatArray

__all__ = [
    "ENGINES",
    "FALLBACKS",
    "GATE_BATCH_SIZE",
    "GATE_CLIPS",
    "GATE_LIMITS",
    "MIN_TOP1_TESTED",
    "PRECISIONS",
    "PROVENANCE_NAMES",
    "TORCH_DTYPES",
    "Engine",
    "EngineRequest",
    "GateLimits",
    "GateReport",
    "Precision",
    "PrecisionChoice",
    "PrecisionRequest",
    "choose_precision",
    "run_gate",
]

Precision = Literal["fp32", "fp16", "bf16", "int8"]
"""The weights' precision in model.pt; the tensors in and out are float32 either way. int8: the
encoder's linear maps as int8 products (int8_products.py), everything else bf16."""
PrecisionRequest = Literal["auto", "fp32", "fp16", "bf16", "int8"]
Engine = Literal["torchscript", "openvino"]
"""What runs the cpu target's classifier: the TorchScript module (every target's reference, the GPU
targets' format) or its OpenVINO conversion (triton_models/openvino_engine.py)."""
EngineRequest = Literal["auto", "torchscript", "openvino"]
ENGINES: tuple[Engine, ...] = ("torchscript", "openvino")
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16", "int8")
TORCH_DTYPES: dict[Precision, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.bfloat16,  # around the int8 products
}
PROVENANCE_NAMES: dict[Precision, str] = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "int8": "int8+bfloat16",
}

FALLBACKS: dict[Precision, Precision] = {"int8": "bf16", "bf16": "fp32", "fp16": "fp32", "fp32": "fp32"}
"""The precision `auto` tries when one cannot be used, and the one an explicit failure suggests."""

GATE_CLIPS = 40
"""Speech clips of 1-10 s the gate runs (espeak-ng, eight voices, seeded speeds and pitches)."""
GATE_BATCH_SIZE = 8
"""Clips per ragged batch in the gate's batched pass, in the order drawn (mixed lengths)."""
MIN_TOP1_TESTED = 10
"""Decisive clips below which the export warns that the gate tested few labels."""


@dataclasses.dataclass(frozen=True, slots=True)
class GateLimits:
    max_abs_prob_diff: float
    """Largest |Δprobability| of any class of any clip, alone or batched, against eager fp32."""
    min_top1_agreement: float
    """Share of decisive clips (alone and batched) whose top class must be the eager fp32 model's.

    A clip is decisive when eager fp32's two best classes are further apart than
    `max_abs_prob_diff`: inside that margin the probability limit already allows the label to go
    either way (a clip at 0.2501 / 0.2499 flips on rounding alone, whatever the precision)."""


GATE_LIMITS: dict[Precision, GateLimits] = {
    "bf16": GateLimits(max_abs_prob_diff=2e-2, min_top1_agreement=0.99),
    "fp16": GateLimits(max_abs_prob_diff=1e-2, min_top1_agreement=0.99),
    "int8": GateLimits(max_abs_prob_diff=2e-2, min_top1_agreement=0.99),
}
"""bf16 keeps 8 bits of mantissa to fp16's 11: its probabilities move about twice as far. int8
products must do no worse than the bf16 they replace."""


@dataclasses.dataclass(frozen=True, slots=True)
class PrecisionChoice:
    precision: Precision
    reason: str
    """Why this precision, as export.json records it (asked for, or what `auto` found)."""
    automatic: bool
    """Chosen by `auto`: a failed gate or missing speech then falls back (fallback) instead of failing."""
    engine: Engine = "torchscript"
    engine_automatic: bool = False
    """The engine was chosen by `--engine auto`: where OpenVINO cannot convert or check the model, the
    export goes on with TorchScript (on_torchscript) instead of failing."""

    def fallback(self, why: str) -> PrecisionChoice:
        """What `auto` tries next when this precision cannot be used: int8 -> bf16 -> fp32, on the same engine."""
        return dataclasses.replace(
            self, precision=FALLBACKS[self.precision], reason=f"{self.reason}, but {why}", automatic=True
        )

    def on_torchscript(self, why: str) -> PrecisionChoice:
        """The same precision on TorchScript, when OpenVINO cannot serve this model."""
        return dataclasses.replace(self, engine="torchscript", reason=f"{self.reason}; TorchScript, as {why}")


def choose_precision(
    requested: PrecisionRequest,
    target: Target,
    cpu_flags: frozenset[str],
    *,
    engine: EngineRequest = "torchscript",
    openvino: bool = False,
) -> PrecisionChoice:
    """The engine and precision to try first. The cpu target runs OpenVINO where it is installed
    (`openvino`) unless `engine` says TorchScript: it ran the same model 1.7-2x faster on two
    Sapphire Rapids threads in bf16 (docs/benchmarks.md). `auto` precision for the cpu target: int8
    where the exporting CPU has int8 dot products and bf16 instructions, bf16 where it has bf16
    only, else fp32; the gate, and `auto`'s fallbacks, decide what is exported.

    The GPU targets stay TorchScript, fp32 unless asked: which half precision is faster there is
    measured on a GPU (benchmarks/gpu_run.sh), and fp16 is not native on the CPU that exports them."""
    choice = _precision(requested, target, cpu_flags)
    if target != "cpu":
        if engine == "openvino":
            raise ValueError("--engine openvino is for the cpu target; the GPU targets serve TorchScript")
        return choice
    if engine == "openvino" and not openvino:
        raise ValueError("--engine openvino needs the openvino package (pip install 'emotion-build[openvino]')")
    if engine == "torchscript" or not openvino:
        return choice
    return dataclasses.replace(choice, engine="openvino", engine_automatic=engine == "auto")


def _precision(requested: PrecisionRequest, target: Target, cpu_flags: frozenset[str]) -> PrecisionChoice:
    if requested != "auto":
        if requested == "fp16" and target == "cpu":
            raise ValueError("--dtype fp16 is for the GPU targets (gpu, gpu-python); on a CPU use bf16")
        if requested == "int8" and target != "cpu":
            raise ValueError("--dtype int8 is for the cpu target; on a GPU use fp16 or bf16")
        return PrecisionChoice(requested, "asked for (--dtype)", automatic=False)
    if target != "cpu":
        return PrecisionChoice("fp32", "auto: GPU targets export fp32 unless --dtype says otherwise", automatic=True)
    found = native_bf16_flags(cpu_flags)
    if not found:
        return PrecisionChoice(
            "fp32", "auto: this CPU has no bf16 instructions (avx512_bf16, amx_bf16)", automatic=True
        )
    int8 = native_int8_flags(cpu_flags)
    if int8:
        reason = f"auto: this CPU computes int8 products ({', '.join(int8)}) and bf16 ({', '.join(found)}) natively"
        return PrecisionChoice("int8", reason, automatic=True)
    return PrecisionChoice("bf16", f"auto: this CPU computes bf16 natively ({', '.join(found)})", automatic=True)


@dataclasses.dataclass(frozen=True, slots=True)
class GateReport:
    """The reduced-precision module against the eager fp32 model on the gate's speech."""

    precision: Precision
    clips: int
    audio_s: float
    source: str
    """Where the speech came from: espeak-ng voices, or the operator's folder."""
    max_abs_prob_diff_alone: float
    max_abs_prob_diff_batched: float
    top1_agreement_alone: float
    """Over the decisive clips (GateLimits.min_top1_agreement)."""
    top1_agreement_batched: float
    ties: int
    """Clips whose eager fp32 top-two margin is within the probability limit: not counted for top-1."""
    top1_tested: int
    """Clips the top-1 check tested (the decisive ones); with none, the agreements are 1.0 by default and
    the gate vouches for no label (the export warns below MIN_TOP1_TESTED)."""
    top1_agreement_all: float
    """Over every clip, ties included, alone or batched (the lower): recorded, not gated."""
    max_abs_logit_diff: float
    """Alone or batched: logits move further than probabilities; recorded, not gated."""
    batch_invariance: float
    """Largest |Δprobability| of a clip between alone and inside a ragged batch (reduced precision)."""
    min_top1_margin: float
    """Smallest gap between a clip's two most probable classes under eager fp32: a label can only
    flip where the answer moves by half of it."""
    limits: GateLimits

    @property
    def max_abs_prob_diff(self) -> float:
        return max(self.max_abs_prob_diff_alone, self.max_abs_prob_diff_batched)

    @property
    def top1_agreement(self) -> float:
        return min(self.top1_agreement_alone, self.top1_agreement_batched)

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_prob_diff <= self.limits.max_abs_prob_diff
            and self.top1_agreement >= self.limits.min_top1_agreement
        )

    def record(self) -> dict[str, object]:
        """What export.json keeps of the gate: every figure, the limits, and the verdict."""
        return {**dataclasses.asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (
            f"{self.precision} vs eager fp32 on {self.clips} speech clips ({self.audio_s:.0f} s, {self.source}): "
            f"max |Δprob| {self.max_abs_prob_diff_alone:.2e} alone, {self.max_abs_prob_diff_batched:.2e} in ragged "
            f"batches of {GATE_BATCH_SIZE} (limit {self.limits.max_abs_prob_diff:g}); top-1 agreement "
            f"{self.top1_agreement_alone:.1%} alone, {self.top1_agreement_batched:.1%} batched of "
            f"{self.top1_tested} decisive clips (limit {self.limits.min_top1_agreement:.0%}; {self.ties} within "
            f"{self.limits.max_abs_prob_diff:g} of a tie, {self.top1_agreement_all:.1%} over all); alone vs batched "
            f"{self.batch_invariance:.2e}, smallest top-1 margin {self.min_top1_margin:.2e}"
        )


Forward = Callable[[FloatArray, Sequence[int]], torch.Tensor]
"""A flat batch and its clip ends -> logits [clips, classes] as float32 on the CPU."""


def run_gate(
    module: Forward,
    reference: Callable[[FloatArray], torch.Tensor],
    clips: Sequence[FloatArray],
    *,
    precision: Precision,
    sample_rate: int,
    source: str,
    progress: Callable[[str], None] = lambda _: None,
) -> GateReport:
    """`clips` are normalised as the server feeds them; `reference` maps one clip to eager fp32 logits [1, classes]."""
    if precision == "fp32":
        raise ValueError("fp32 is checked in logits (check_parity), not by the reduced-precision gate")
    if not clips:
        raise ValueError("the gate needs at least one clip")
    with torch.inference_mode():
        progress(f"  eager fp32 reference on {len(clips)} clips")
        eager = torch.cat([reference(clip) for clip in clips]).float()
        progress(f"  {precision} module, each clip alone")
        alone = torch.cat([module(clip, [clip.size]) for clip in clips]).float()
        progress(f"  {precision} module, ragged batches of {GATE_BATCH_SIZE}")
        batched = torch.cat(
            [module(*_flat(clips[start : start + GATE_BATCH_SIZE])) for start in range(0, len(clips), GATE_BATCH_SIZE)]
        ).float()
    probabilities = [torch.softmax(logits, dim=-1) for logits in (eager, alone, batched)]
    expected, alone_p, batched_p = probabilities
    limits = GATE_LIMITS[precision]
    top = expected.topk(min(2, expected.shape[-1]), dim=-1).values
    margins = top[:, 0] - top[:, -1] if top.shape[-1] > 1 else torch.ones(len(clips))
    decisive = margins > limits.max_abs_prob_diff
    same_alone = alone_p.argmax(-1) == expected.argmax(-1)
    same_batched = batched_p.argmax(-1) == expected.argmax(-1)

    def share(same: torch.Tensor) -> float:
        return float(same.float().mean()) if len(same) else 1.0

    return GateReport(
        precision=precision,
        clips=len(clips),
        audio_s=sum(clip.size for clip in clips) / sample_rate,
        source=source,
        max_abs_prob_diff_alone=float((alone_p - expected).abs().max()),
        max_abs_prob_diff_batched=float((batched_p - expected).abs().max()),
        top1_agreement_alone=share(same_alone[decisive]),
        top1_agreement_batched=share(same_batched[decisive]),
        ties=int((~decisive).sum()),
        top1_tested=int(decisive.sum()),
        top1_agreement_all=min(share(same_alone), share(same_batched)),
        max_abs_logit_diff=max(float((alone - eager).abs().max()), float((batched - eager).abs().max())),
        batch_invariance=float((alone_p - batched_p).abs().max()),
        min_top1_margin=float(margins.min()),
        limits=limits,
    )


def _flat(clips: Sequence[FloatArray]) -> tuple[FloatArray, list[int]]:
    flat, ends = concatenate(clips)
    return flat, np.asarray(ends).tolist()
