"""HF classifier -> TorchScript -> checked against eager -> Triton repository."""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import transformers
from torch import nn

from .batched_classifier import ConvForm, RaggedEmotionClassifier
from .description import (
    MAX_ABS_AMPLITUDE,
    BatchingSettings,
    ModelDescription,
    Provenance,
    Target,
    receptive_field,
)
from .loading import LoadedModel
from .repository import write_repository
from .served_classifier import serve_form, strip_source_paths
from .triton_models.waveform import normalise

__all__ = [
    "FP16_PROBABILITY_TOLERANCE",
    "PARITY_TOLERANCE",
    "Dtype",
    "ExportError",
    "ExportResult",
    "check_parity",
    "conv_form_for",
    "describe",
    "export",
    "trace",
]

PARITY_TOLERANCE = 1e-4
"""Largest |TorchScript - eager| logit accepted in fp32."""

FP16_PROBABILITY_TOLERANCE = 1e-2
"""Largest |fp16 TorchScript - fp32 eager| probability accepted for `--dtype fp16`."""

Dtype = Literal["fp32", "fp16"]
"""The weights' precision in model.pt; the tensors in and out are float32 either way."""
TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
PROVENANCE_DTYPES = {"fp32": "float32", "fp16": "float16"}

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The export did not produce an artifact that can be trusted; the message says by how much."""


@dataclasses.dataclass(frozen=True, slots=True)
class ParityReport:
    lengths: tuple[int, ...]
    max_abs_logit_diff: float
    """Each clip alone through the reloaded TorchScript file vs the eager HF model."""
    batched_max_abs_logit_diff: float
    """All clips in one ragged batch vs the eager HF model on each clip alone."""
    max_abs_prob_diff: float = 0.0
    """Largest |Δprobability|, alone or batched."""
    top1_agreement: float = 1.0
    """Share of clips whose most probable class is the eager model's, alone and batched."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExportResult:
    repository: Path
    description: ModelDescription
    provenance: Provenance
    parity: ParityReport


def describe(
    loaded: LoadedModel,
    *,
    batching: BatchingSettings,
    min_duration_s: float,
    max_duration_s: float,
    max_abs_amplitude: float = MAX_ABS_AMPLITUDE,
) -> ModelDescription:
    """Everything the served models need to know, read from the HF model and feature extractor."""
    extractor = loaded.feature_extractor
    config = loaded.model.config
    return ModelDescription(
        labels=ModelDescription.labels_from_id2label(loaded.model.config.id2label or {}),
        sample_rate=int(extractor.sampling_rate),
        do_normalize=bool(extractor.do_normalize),
        min_duration_s=min_duration_s,
        max_duration_s=max_duration_s,
        max_abs_amplitude=max_abs_amplitude,
        receptive_field_samples=receptive_field(config.conv_kernel, config.conv_stride),
        batching=batching,
        untrained=loaded.untrained,
        embedding_size=int(loaded.model.config.classifier_proj_size),
    )


def conv_form_for(target: Target) -> ConvForm:
    """GPU targets take the matrix-product convolutions (cuDNN is slow on those two shapes), a CPU the native ones."""
    return "native" if target == "cpu" else "matmul"


def trace(
    loaded: LoadedModel,
    sample_rate: int,
    *,
    dtype: Dtype = "fp32",
    device: str = "cpu",
    conv_form: ConvForm = "native",
) -> torch.jit.ScriptModule:
    """Trace on `device` with the weights in `dtype` (the eager model itself is left as it is)."""
    model = loaded.model
    if dtype != "fp32":
        model = copy.deepcopy(model)
        nn.Module.to(model, TORCH_DTYPES[dtype])  # in place; transformers' own `to` wrapper confuses mypy
    wrapper = RaggedEmotionClassifier(model, conv_form).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    lengths = [sample_rate, (sample_rate * 3) // 5]
    flat = torch.randn(sum(lengths), generator=generator).to(device)
    ends = torch.tensor(lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(device)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            wrapper, (flat, ends), check_trace=False
        )
        return serve_form(traced, loaded.model.config)


def check_parity(
    scripted: torch.jit.ScriptModule,
    loaded: LoadedModel,
    description: ModelDescription,
    lengths: Sequence[int],
    *,
    device: str = "cpu",
) -> ParityReport:
    """The scripted module (on `device`) against the eager fp32 model (on CPU), alone and in one batch."""
    rng = np.random.default_rng(1234)
    clips = [
        normalise((0.1 * rng.standard_normal(n)).astype(np.float32), do_normalize=description.do_normalize)
        for n in lengths
    ]

    def run(flat: npt.NDArray[np.float32], ends: Sequence[int]) -> torch.Tensor:
        ends_tensor = torch.tensor(np.asarray(ends), dtype=torch.int32, device=device)
        logits: torch.Tensor = scripted(torch.from_numpy(flat).to(device), ends_tensor)[0]
        return logits.float().cpu()

    with torch.no_grad():
        eager = torch.cat([loaded.model(input_values=torch.from_numpy(clip)[None]).logits for clip in clips])
        alone = torch.cat([run(clip, [clip.size]) for clip in clips])
        batched = run(np.concatenate(clips), np.cumsum(lengths).tolist())
    probabilities = [torch.softmax(logits, dim=-1) for logits in (eager, alone, batched)]
    top1 = [p.argmax(dim=-1) for p in probabilities]
    return ParityReport(
        tuple(int(n) for n in lengths),
        float((alone - eager).abs().max()),
        float((batched - eager).abs().max()),
        max_abs_prob_diff=max(float((p - probabilities[0]).abs().max()) for p in probabilities[1:]),
        top1_agreement=float(torch.cat([top1[1] == top1[0], top1[2] == top1[0]]).float().mean()),
    )


def export(
    loaded: LoadedModel,
    output: Path,
    target: Target,
    description: ModelDescription,
    *,
    check_lengths: Sequence[int] | None = None,
    progress: Progress | None = None,
    dtype: Dtype = "fp32",
) -> ExportResult:
    """`dtype` "fp16" (GPU targets only) traces half-precision weights, on CUDA when there is one, and
    checks probabilities against the fp32 eager model instead of logits."""
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
    if dtype != "fp32" and target == "cpu":
        raise ValueError(f"--dtype {dtype} is for the GPU targets (gpu, gpu-python); on a CPU half precision is slower")
    device = "cuda" if dtype != "fp32" and torch.cuda.is_available() else "cpu"
    sample_rate = description.sample_rate
    if check_lengths is None:
        rng = np.random.default_rng(7)
        upper = min(description.max_samples, 8 * sample_rate)
        check_lengths = sorted(
            {description.min_samples, sample_rate, *rng.integers(description.min_samples, upper, 3).tolist()}
        )
    conv_form = conv_form_for(target)
    say(f"tracing {loaded.source} to TorchScript ({dtype} weights, {conv_form} convolutions, on {device})")
    scripted = trace(loaded, sample_rate, dtype=dtype, device=device, conv_form=conv_form)
    with tempfile.TemporaryDirectory(prefix="emotion-export-") as scratch:
        artifact = Path(scratch) / "model.pt"
        scripted.save(str(artifact))
        strip_source_paths(artifact)
        reloaded: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(artifact), map_location=device
        )
        say(
            f"checking the saved TorchScript file against the eager model on {len(check_lengths)} lengths: "
            + ", ".join(f"{n / sample_rate:.2f} s" for n in check_lengths)
        )
        parity = check_parity(reloaded, loaded, description, check_lengths, device=device)
        worst = max(parity.max_abs_logit_diff, parity.batched_max_abs_logit_diff)
        if dtype != "fp32":
            if not parity.max_abs_prob_diff <= FP16_PROBABILITY_TOLERANCE:
                raise ExportError(
                    f"the {dtype} TorchScript differs from the fp32 eager model by {parity.max_abs_prob_diff:.3g} "
                    f"in probabilities (logits {worst:.3g}); the limit is {FP16_PROBABILITY_TOLERANCE:g}: "
                    "export with --dtype fp32"
                )
        elif not worst <= PARITY_TOLERANCE:
            raise ExportError(
                f"TorchScript differs from the eager model by {worst:.3g} in logits "
                f"(alone {parity.max_abs_logit_diff:.3g}, batched {parity.batched_max_abs_logit_diff:.3g}); "
                f"the limit is {PARITY_TOLERANCE:g}"
            )
        say(
            f"parity ok: max |Δlogit| {parity.max_abs_logit_diff:.2e} alone, "
            f"{parity.batched_max_abs_logit_diff:.2e} in one ragged batch; max |Δprob| {parity.max_abs_prob_diff:.2e}, "
            f"top-1 agreement {parity.top1_agreement:.0%}"
        )
        provenance = Provenance(
            source_model=loaded.source,
            untrained=loaded.untrained,
            target=target,
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            dtype=PROVENANCE_DTYPES[dtype],
            max_abs_logit_diff=worst,
            max_abs_prob_diff=parity.max_abs_prob_diff,
            top1_agreement=parity.top1_agreement,
            traced_on=device,
            conv_form=conv_form,
        )
        say(f"writing the {target} repository to {output}")
        write_repository(output, description, target, artifact=artifact, provenance=provenance)
    return ExportResult(output, description, provenance, parity)
