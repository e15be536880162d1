"""Every system the bench measures, with its name in the tables and its column in the summary.

A new system (say the HF pipeline in bf16) is a `System` here, a way to measure it (its module,
called from `run`), and, where the targets compare with it, its key in `HF_SYSTEMS`: the report's
summary table takes its columns from `SYSTEMS` in order.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class System:
    key: str
    """What `Point.system` holds for it."""
    name: str
    """Its name in the table of every point and in the progress log."""
    column: str | None
    """Its column in the summary table (the best point per workload); None: no column."""
    setting: str
    """What a point's setting is for it, as the tables prefix it: "B=" batch size, "c=" concurrency."""


SYSTEMS: tuple[System, ...] = (
    System("hf", "HF pipeline, one clip per call", "HF, 1 clip/call", "B="),
    System("hf_batch", "HF pipeline, batch_size", "HF, batch_size", "B="),
    System("hf_bf16", "HF pipeline in bf16, one clip per call", "HF bf16, 1 clip/call", "B="),
    System("torchscript", "in-process TorchScript", "in-process TorchScript", "B="),
    System("torchscript_1t", "in-process TorchScript, 1 thread", None, "B="),
    System("served", "served, perf_analyzer (gRPC)", "served, perf_analyzer", "c="),
    System("sdk", "served, SDK classify_many", "served, SDK", "c="),
    # The peers (peers.py): the same model on another engine, a plain loop in its own process.
    System("peer_ov", "OpenVINO, its default precision", None, "B="),
    System("peer_ov_int8", "OpenVINO + NNCF int8 PTQ, encoder linears", None, "B="),
    System("peer_ort", "ONNX Runtime fp32", None, "B="),
    System("peer_ort_int8", "ONNX Runtime dynamic int8, encoder linears", None, "B="),
)
SYSTEM_NAMES = {system.key: system.name for system in SYSTEMS}
SUMMARY_SYSTEMS = tuple(system for system in SYSTEMS if system.column is not None)
"""The summary table's columns, in order."""

HF_SYSTEMS = ("hf", "hf_batch")
"""The HF pipeline's rows as the model card's users run it (fp32); the rounds measure both again, and
the targets compare with each. The bf16 row is there for honesty, not as a baseline: the card's
users run fp32, and a user who casts the model to bf16 gets its speed without a server."""

LATENCY_FIRST_SERVER = "latency-first"
"""The second server the c=1 pairs run against (`pairs.LATENCY_FIRST`); the report lists it after
the server under test."""
