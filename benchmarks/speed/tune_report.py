"""The tune section of docs/benchmarks.md: one row per batching candidate, one server each."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .ranking import at
from .results import TuneResult


def tune_markdown(
    results: Sequence[TuneResult], workloads: Sequence[str], *, date: str, machine: str, model: str
) -> str:
    concurrencies = sorted({p.setting for result in results for p in result.points})
    knobs = "| max batch | cut at | queue delay µs | instances x threads | preprocess | length groups | warmup |"
    header = knobs + " ".join(f" {w} c={c} |" for w in workloads for c in concurrencies) + " first request ms |"
    lines = [
        f"Measured {date} on {machine}; {model}; one server per row, "
        "perf_analyzer over gRPC. Cells: audio-seconds per second (p50 / p99 latency in ms). Cut at: the "
        "preferred batch size the batcher cuts a longer queue at (-: none). Threads 0: torch's default "
        "(one per core).",
        "",
        header,
        "|---:|---:|---:|---|---:|---|---:|" + "---:|" * (len(workloads) * len(concurrencies) + 1),
    ]
    notes = []
    for row, result in enumerate(results, start=1):
        b = result.settings
        groups = "whole batch" if math.isinf(b.max_padding_fraction) else f"≤ {b.max_padding_fraction:g} padding"
        cells = []
        for workload in workloads:
            for concurrency in concurrencies:
                point = at(result.points, "served", workload, concurrency)
                cells.append(
                    f"{point.audio_s_per_s:.2f} ({point.p50_ms:.0f} / {point.p99_ms:.0f})" if point else "failed"
                )
        lines.append(
            f"| {b.max_batch_size} | {b.cut or '-'} | {b.max_queue_delay_us} "
            f"| {b.classifier_instances} x {b.intra_op_threads} | {b.preprocess_instances} | {groups} "
            f"| {b.warmup_count} | " + " | ".join(cells) + f" | {result.first[0][1]:.0f} |"
        )
        notes += [
            # Several rows share max batch and instances (the cut, the delay, ...): the row number tells them apart.
            f"row {row}, max batch {b.max_batch_size}, {b.classifier_instances} x {b.intra_op_threads}: {f}"
            for f in result.failures
        ]
    loads = [p.load for result in results for p in result.points] or [0.0]
    lines += ["", f"Load average (1 min) over the points: {min(loads):.1f}-{max(loads):.1f}."]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)
