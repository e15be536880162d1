"""What the served system must reach, and the verdicts on it: the one place for targets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .results import Point


@dataclasses.dataclass(frozen=True, slots=True)
class Targets:
    """The targets on a CPU machine, which the report's summary table judges every workload by."""

    served_vs_inprocess: float = 0.9
    """Served throughput over the in-process module's (the very file it serves), both at their best setting."""
    served_vs_hf: float = 4.0
    """Served throughput over the HF pipeline called one clip at a time, as the model card calls it."""
    served_vs_peer: float = 1.2
    """Served throughput over the fastest peer (OpenVINO, ONNX Runtime: peers.py) within the gate's limit of
    fp32, at its best batch: what a user could get from a loop over a converted model."""
    peer_lone_request_ms: float = 5.0
    """A lone request served (c=1) against one clip through the fastest peer: served p50 minus the peer's
    one-clip p50 at most this."""
    served_vs_hf_batched: float = 2.0
    """Served throughput over the HF pipeline with its own batching (`batch_size`)."""
    added_latency_ms: float = 5.0
    """Latency serving adds to a lone request at c=1, over in-process batch 1."""
    lone_request_ms: float = 0.0
    """A lone request served (c=1) against one clip through the HF pipeline: served p50 minus HF's at most
    this, so that a user who swaps the pipeline for the server waits no longer for one clip."""


@dataclasses.dataclass(frozen=True, slots=True)
class GpuTarget:
    """The issue's target on one H100: served throughput at a p99 latency no worse than this."""

    audio_s_per_s: float = 10_000.0
    p99_ms: float = 100.0
    vs_hf: float = 4.0
    """Served throughput (at that p99) over the HF pipeline's better row on the same GPU."""


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
        hf = [p.audio_s_per_s for p in points if p.system in ("hf", "hf_batch") and p.workload == workload]
        versus = (
            f"; {top.audio_s_per_s / max(hf):.1f}x the HF pipeline's better row (target ≥ {GPU_TARGET.vs_hf:g}x): "
            + verdict(top.audio_s_per_s >= GPU_TARGET.vs_hf * max(hf))
            if hf
            else ""
        )
        notes.append(
            f"GPU target (≥ {GPU_TARGET.audio_s_per_s:,.0f} audio-s/s served at p99 ≤ {GPU_TARGET.p99_ms:g} ms), "
            f"{workload}: {top.audio_s_per_s:,.0f} audio-s/s at c={top.setting}, p99 {top.p99_ms:.0f} ms: "
            + verdict(top.audio_s_per_s >= GPU_TARGET.audio_s_per_s)
            + versus
        )
    return notes
