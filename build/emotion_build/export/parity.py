"""fp32's check: the saved file against the eager Hugging Face model in logits, each clip alone and all
in one ragged batch; reduced precisions are gated on speech instead (precision.run_gate)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from ..model.loading import LoadedModel
from ..repository.description import ModelDescription
from ..triton_models.waveform import normalise

__all__ = ["PARITY_TOLERANCE", "CheckedModule", "ParityReport", "check_parity"]

PARITY_TOLERANCE = 1e-4
"""Largest |TorchScript - eager| logit accepted in fp32."""


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
    non_finite: tuple[str, ...] = ()
    """Which side gave NaN or infinite logits, for which clips: a difference of NaN says nothing."""


def check_parity(
    scripted: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
    loaded: LoadedModel,
    description: ModelDescription,
    lengths: Sequence[int],
    *,
    device: str = "cpu",
    engine: str = "TorchScript",
) -> ParityReport:
    """The exported module (on `device`; `engine` names it in messages) against the eager fp32 model (on
    CPU), alone and in one batch."""
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
    rate = description.sample_rate
    non_finite = tuple(
        f"{side} gives non-finite logits for the clips of "
        + ", ".join(f"{lengths[i] / rate:.2f} s" for i in bad.nonzero().flatten().tolist())
        for side, logits in (
            ("the eager Hugging Face model (the checkpoint itself)", eager),
            (f"the {engine} export, each clip alone,", alone),
            (f"the {engine} export, the clips in one ragged batch,", batched),
        )
        if bool((bad := ~torch.isfinite(logits).all(dim=-1)).any())
    )
    return ParityReport(
        tuple(int(n) for n in lengths),
        float((alone - eager).abs().max()),
        float((batched - eager).abs().max()),
        max_abs_prob_diff=max(float((p - probabilities[0]).abs().max()) for p in probabilities[1:]),
        top1_agreement=float(torch.cat([top1[1] == top1[0], top1[2] == top1[0]]).float().mean()),
        non_finite=non_finite,
    )


CheckedModule = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
"""The exported classifier as the checks call it: flat clips and their ends -> logits first."""
