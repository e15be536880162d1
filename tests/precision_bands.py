"""How far a served artifact's answers may be from eager fp32 and from themselves in a batch: fp32's
fixed tolerances, or what the export's precision gate measured and allowed (classifier/1/export.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from emotion_build.repository.description import Provenance

FP32_VS_EAGER = 1e-4
FP32_BATCHED = 1e-5


@dataclasses.dataclass(frozen=True, slots=True)
class Bands:
    weights_dtype: str
    vs_eager: float
    """Largest |Δprob| against the eager fp32 model: fp32's parity, or the gate's limit."""
    batched: float
    """Largest |Δprob| of a clip alone against inside a batch: fp32's, or what the gate measured."""

    @property
    def reduced(self) -> bool:
        return self.weights_dtype != "float32"


def bands_of(repository: Path) -> Bands:
    provenance = Provenance.from_json((repository / "classifier" / "1" / "export.json").read_text())
    gate = provenance.gate
    if gate is None:
        return Bands(provenance.dtype, FP32_VS_EAGER, FP32_BATCHED)
    limits = gate["limits"]
    assert isinstance(limits, dict)
    vs_eager, batched = limits["max_abs_prob_diff"], gate["batch_invariance"]
    assert isinstance(vs_eager, float) and isinstance(batched, float)
    return Bands(provenance.dtype, vs_eager, max(batched, FP32_BATCHED))
