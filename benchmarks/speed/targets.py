"""What the served system must reach, and the verdicts on it: the one place for targets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .results import Point


@dataclasses.dataclass(frozen=True, slots=True)
class Targets:
    """The targets on a CPU machine, which the report's summary table judges every workload by."""

    served_vs_inprocess: float = 0.9
    """Served throughput over the in-process module's, both at their best setting."""
    served_vs_hf: float = 1.0
    """Served throughput over the better of the HF pipeline's rows."""
    added_latency_ms: float = 5.0
    """Latency serving adds to a lone request at c=1, over in-process batch 1."""


@dataclasses.dataclass(frozen=True, slots=True)
class GpuTarget:
    """The issue's target on one H100: served throughput at a p99 latency no worse than this."""

    audio_s_per_s: float = 10_000.0
    p99_ms: float = 100.0


TARGETS = Targets()
GPU_TARGET = GpuTarget()


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def gpu_target_notes(points: Sequence[Point], workloads: Sequence[str]) -> list[str]:
    """The issue's H100 target per workload: the best served point whose p99 stays within the limit."""
    notes = []
    for workload in workloads:
        within = [
            p for p in points if p.system == "served" and p.workload == workload and p.p99_ms <= GPU_TARGET.p99_ms
        ]
        if not within:
            notes.append(f"GPU target, {workload}: no served point kept p99 ≤ {GPU_TARGET.p99_ms:g} ms.")
            continue
        top = max(within, key=lambda p: p.audio_s_per_s)
        notes.append(
            f"GPU target (≥ {GPU_TARGET.audio_s_per_s:,.0f} audio-s/s served at p99 ≤ {GPU_TARGET.p99_ms:g} ms), "
            f"{workload}: {top.audio_s_per_s:,.0f} audio-s/s at c={top.setting}, p99 {top.p99_ms:.0f} ms: "
            + verdict(top.audio_s_per_s >= GPU_TARGET.audio_s_per_s)
        )
    return notes
