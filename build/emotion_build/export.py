"""HF classifier -> TorchScript -> checked against eager -> Triton repository."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers

from .batched_classifier import RaggedEmotionClassifier
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
from .triton_models.waveform import normalise

__all__ = ["PARITY_TOLERANCE", "ExportError", "ExportResult", "check_parity", "describe", "export", "trace"]

PARITY_TOLERANCE = 1e-4
"""Largest |TorchScript - eager| logit accepted in fp32."""

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


def trace(loaded: LoadedModel, sample_rate: int) -> torch.jit.ScriptModule:
    wrapper = RaggedEmotionClassifier(loaded.model).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = [sample_rate, (sample_rate * 3) // 5]
    flat = torch.randn(sum(lengths), generator=generator)
    ends = torch.tensor(lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            wrapper, (flat, ends), check_trace=False
        )
        return traced


def check_parity(
    scripted: torch.jit.ScriptModule, loaded: LoadedModel, description: ModelDescription, lengths: Sequence[int]
) -> ParityReport:
    rng = np.random.default_rng(1234)
    clips = [
        normalise((0.1 * rng.standard_normal(n)).astype(np.float32), do_normalize=description.do_normalize)
        for n in lengths
    ]
    alone: list[float] = []
    eager_logits = []
    with torch.no_grad():
        for clip in clips:
            eager = loaded.model(input_values=torch.from_numpy(clip)[None]).logits[0]
            eager_logits.append(eager)
            traced = scripted(torch.from_numpy(clip), torch.tensor([clip.size], dtype=torch.int32))[0]
            alone.append(float((traced[0] - eager).abs().max()))
        flat = torch.from_numpy(np.concatenate(clips))
        ends = torch.tensor(np.cumsum(lengths), dtype=torch.int32)
        batched = scripted(flat, ends)[0]
    batch_diff = max(float((batched[i] - eager_logits[i]).abs().max()) for i in range(len(clips)))
    return ParityReport(tuple(int(n) for n in lengths), max(alone), batch_diff)


def export(
    loaded: LoadedModel,
    output: Path,
    target: Target,
    description: ModelDescription,
    *,
    check_lengths: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    sample_rate = description.sample_rate
    if check_lengths is None:
        rng = np.random.default_rng(7)
        upper = min(description.max_samples, 8 * sample_rate)
        check_lengths = sorted(
            {description.min_samples, sample_rate, *rng.integers(description.min_samples, upper, 3).tolist()}
        )
    say(f"tracing {loaded.source} to TorchScript")
    scripted = trace(loaded, sample_rate)
    with tempfile.TemporaryDirectory(prefix="emotion-export-") as scratch:
        artifact = Path(scratch) / "model.pt"
        scripted.save(str(artifact))
        reloaded: torch.jit.ScriptModule = torch.jit.load(str(artifact))  # type: ignore[no-untyped-call]
        say(
            f"checking the saved TorchScript file against the eager model on {len(check_lengths)} lengths: "
            + ", ".join(f"{n / sample_rate:.2f} s" for n in check_lengths)
        )
        parity = check_parity(reloaded, loaded, description, check_lengths)
        worst = max(parity.max_abs_logit_diff, parity.batched_max_abs_logit_diff)
        if not worst <= PARITY_TOLERANCE:
            raise ExportError(
                f"TorchScript differs from the eager model by {worst:.3g} in logits "
                f"(alone {parity.max_abs_logit_diff:.3g}, batched {parity.batched_max_abs_logit_diff:.3g}); "
                f"the limit is {PARITY_TOLERANCE:g}"
            )
        say(
            f"parity ok: max |Δlogit| {parity.max_abs_logit_diff:.2e} alone, "
            f"{parity.batched_max_abs_logit_diff:.2e} in one ragged batch"
        )
        provenance = Provenance(
            source_model=loaded.source,
            untrained=loaded.untrained,
            target=target,
            torch_version=torch.__version__,
            transformers_version=transformers.__version__,
            max_abs_logit_diff=worst,
        )
        say(f"writing the {target} repository to {output}")
        write_repository(output, description, target, artifact=artifact, provenance=provenance)
    return ExportResult(output, description, provenance, parity)
