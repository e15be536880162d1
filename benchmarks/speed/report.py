"""The throughput section of docs/benchmarks.md, made from a `Run` alone: nothing here measures, so a
saved run (`--render`) gives the same tables as the run that saved it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from interleaved import PairedLatency

from .ranking import best
from .results import Interleaved, Point, Run
from .systems import HF_SYSTEMS, LATENCY_FIRST_SERVER, SUMMARY_SYSTEMS, SYSTEM_NAMES
from .targets import TARGETS, verdict


@dataclasses.dataclass(frozen=True, slots=True)
class SummaryRow:
    """One workload's line of the summary table."""

    workload: str
    best: dict[str, Point | None]
    """Per key of `SUMMARY_SYSTEMS`: its fastest point in the sweep."""
    rounds: bool
    """Whether the ratios come from rounds (else from the sweep's best points)."""
    served_vs_inprocess: tuple[float, ...]
    served_vs_hf: tuple[float, ...]
    paired: dict[str, PairedLatency]
    """Per server: the c=1 pairs measured against it."""


def latency_first_last(server: str) -> bool:
    """Sort key: the default server's c=1 pairs first, the latency-first server's after them."""
    return server == LATENCY_FIRST_SERVER


def summary_rows(
    points: Sequence[Point],
    workloads: Sequence[str],
    pairs: Sequence[PairedLatency],
    rounds: dict[str, Interleaved],
) -> list[SummaryRow]:
    rows = []
    for name in workloads:
        hf_best = best(points, HF_SYSTEMS, name)
        ts = best(points, "torchscript", name)
        srv = best(points, "served", name)
        rows.append(
            SummaryRow(
                workload=name,
                best={system.key: best(points, system.key, name) for system in SUMMARY_SYSTEMS},
                rounds=name in rounds,
                served_vs_inprocess=rounds[name].served_vs_inprocess()
                if name in rounds
                else (srv.audio_s_per_s / ts.audio_s_per_s,)
                if srv and ts
                else (),
                served_vs_hf=rounds[name].served_vs_hf()
                if name in rounds
                else (srv.audio_s_per_s / hf_best.audio_s_per_s,)
                if srv and hf_best
                else (),
                paired={pair.server: pair for pair in pairs if pair.workload == name},
            )
        )
    return rows


def _cell(point: Point | None, unit: str) -> str:
    if point is None:
        return "-"
    return f"{point.audio_s_per_s:.1f} ({unit}{point.setting})"


def _ratio_cell(ratios: Sequence[float], target: float, *, rounds: bool) -> str:
    """The median of the rounds' ratios and their range, or the sweep's one ratio where there were no rounds."""
    if not ratios:
        return "-"
    middle = float(np.median(ratios))
    spread = "(sweep)" if not rounds else "(1 round)" if len(ratios) == 1 else f"({min(ratios):.2f}-{max(ratios):.2f})"
    return f"{middle:.2f} {verdict(middle >= target)} {spread}"


def _added_cell(pair: PairedLatency | None) -> str:
    if pair is None:
        return "-"
    outcome = pair.verdict(TARGETS.added_latency_ms)
    return (
        f"{pair.added_p50_ms:+.1f} ms {'**not met**' if outcome == 'not met' else outcome} "
        f"[{pair.added_q25_ms:+.0f}, {pair.added_q75_ms:+.0f}]; outside the model {pair.outside_model_p50_ms:.1f} ms"
    )


def markdown(run: Run) -> str:
    points, workloads, context, pairs, rounds = run.points, run.workload_names, run.context, run.c1_pairs, run.rounds
    servers = sorted({pair.server for pair in pairs}, key=latency_first_last)
    lines = [
        f"Measured {context.date} on {context.machine}; {context.model}; clips: {context.clips}; "
        f"HF pipeline: {context.hf_attention} attention, batch_size={context.hf_batch_size}, "
        f"{context.hf_process}; in-process TorchScript: {context.inprocess_memory}; "
        f"served: {context.served}. Load average (1 min) over the points: {context.load}.",
        "",
        "Throughput in audio-seconds per second (the batch size B or concurrency c it was best at in the sweep). "
        f"Targets: served ≥ {TARGETS.served_vs_inprocess}x in-process, ≥ {TARGETS.served_vs_hf}x the "
        f"better HF row, latency added at c=1 ≤ {TARGETS.added_latency_ms:g} ms over in-process batch 1. "
        "Served / in-process and served / HF are medians over rounds that measure each system's best setting "
        "from the sweep and the one beside it again in turn, taking each round's faster of the two (in brackets "
        "their range; '(sweep)': the sweep's ratio, without rounds). "
        "Added at c=1 is the median over pairs of one clip in-process then the same clip "
        "served, alternately, with the same threads on both sides, [its interquartile range]: met when the median "
        "is within the target, not met when the lower quartile is above it, within noise otherwise; then the "
        "median time of a served request outside the classifier's compute (gRPC, ensemble, preprocess, IPC: "
        "Triton's statistics per request), which the noise of the model's own time does not blur.",
        "",
        "| workload | "
        + "".join(f"{system.column} | " for system in SUMMARY_SYSTEMS)
        + "served / in-process | served / HF | "
        + " | ".join(f"added at c=1, {server} server" for server in servers)
        + " |",
        "|---|" + "---:|" * (len(SUMMARY_SYSTEMS) + 2) + "---:|" * len(servers),
    ]
    for row in summary_rows(points, workloads, pairs, rounds):
        lines.append(
            f"| {row.workload} "
            + "".join(f"| {_cell(row.best[system.key], system.setting)} " for system in SUMMARY_SYSTEMS)
            + f"| {_ratio_cell(row.served_vs_inprocess, TARGETS.served_vs_inprocess, rounds=row.rounds)} "
            f"| {_ratio_cell(row.served_vs_hf, TARGETS.served_vs_hf, rounds=row.rounds)} "
            + "".join(f"| {_added_cell(row.paired.get(server))} " for server in servers)
            + "|"
        )
    lines += _rounds_table(rounds) + _pairs_table(pairs, workloads) + _points_table(points, workloads)
    lines += _breakdown_table(points) + _first_requests_table(run.first_requests)
    if run.notes:
        lines += [""] + [f"- {note}" for note in run.notes]
    lines += ["", f"Command: `{context.command}`; wall time {context.wall_min:.1f} min."]
    return "\n".join(lines)


def _rounds_table(rounds: dict[str, Interleaved]) -> list[str]:
    if not rounds:
        return []
    lines = [
        "",
        "The rounds (audio-s/s; each round measures in-process, served and HF in turn at the sweep's best "
        "setting of each, then at the setting beside it; the faster of each system's two is shown):",
        "",
        "| workload | round | HF pipeline | in-process | served | served / in-process | served / HF |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, measured in rounds.items():
        vs_hf = measured.served_vs_hf() or (None,) * len(measured.served)
        for index, (ts, srv, ratio, ratio_hf) in enumerate(
            zip(measured.inprocess, measured.served, measured.served_vs_inprocess(), vs_hf, strict=True), 1
        ):
            hf = measured.hf[index - 1] if measured.hf else None
            lines.append(
                f"| {name} | {index} | {_cell(hf, 'B=')} | {_cell(ts, 'B=')} | {_cell(srv, 'c=')} "
                f"| {ratio:.2f} | {f'{ratio_hf:.2f}' if ratio_hf is not None else '-'} |"
            )
    return lines


def _pairs_table(pairs: Sequence[PairedLatency], workloads: Sequence[str]) -> list[str]:
    if not pairs:
        return []
    lines = [
        "",
        "c=1, served and in-process alternately on the same clips (ms; classifier compute: Triton's statistics "
        "for each served request):",
        "",
        "| workload | server | in-process | pairs | in-process p50 | served p50 | classifier compute p50 "
        "| added: median (IQR) | outside the model p50 | load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair in sorted(pairs, key=lambda p: (latency_first_last(p.server), list(workloads).index(p.workload))):
        lines.append(
            f"| {pair.workload} | {pair.server} | {pair.inprocess} | {pair.pairs} | {pair.inprocess_p50_ms:.1f} "
            f"| {pair.served_p50_ms:.1f} | {pair.compute_p50_ms:.1f} | {pair.added_p50_ms:+.1f} "
            f"({pair.added_q25_ms:+.1f} to {pair.added_q75_ms:+.1f}) | {pair.outside_model_p50_ms:.1f} "
            f"| {pair.load:.1f} |"
        )
    return lines


def _points_table(points: Sequence[Point], workloads: Sequence[str]) -> list[str]:
    lines = [
        "",
        "Every point (latency: per call for HF and TorchScript, whose batch answers together; per request served):",
        "",
        "| workload | system | B or c | audio-s/s | clips/s | p50 ms | p95 ms | p99 ms | CPU-s per audio-s | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload in workloads:
        for point in (p for p in points if p.workload == workload):
            cpu = f"{point.cpu_s_per_audio_s:.3f}" if point.cpu_s_per_audio_s is not None else "-"
            lines.append(
                f"| {point.workload} | {SYSTEM_NAMES[point.system]} | {point.setting} | {point.audio_s_per_s:.2f} "
                f"| {point.clips_per_s:.2f} | {point.p50_ms:.1f} | {point.p95_ms:.1f} | {point.p99_ms:.1f} | {cpu} "
                f"| {point.load:.1f} |"
            )
    return lines


def _breakdown_table(points: Sequence[Point]) -> list[str]:
    served = [p for p in points if p.system == "served" and p.detail]
    if not served:
        return []
    lines = [
        "",
        "Where a served request's time goes (perf_analyzer's averages, ms). perf_analyzer's CSV gives only the "
        "ensemble's own queue, so the time requests wait in the preprocess and classifier queues lands in the "
        "'network + server send/recv' column: at c=1 that column is the network and IPC overhead, above c=1 "
        "it is mostly queueing. Compute is summed over the ensemble's steps:",
        "",
        "| workload | c | client send | network + server send/recv (+ step queues) | ensemble queue "
        "| server compute | client recv |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in served:
        d = p.detail
        lines.append(
            f"| {p.workload} | {p.setting} | {d['client_send_ms']:.2f} | {d['network_ms']:.2f} "
            f"| {d['server_queue_ms']:.2f} | {d['server_compute_ms']:.1f} | {d['client_recv_ms']:.2f} |"
        )
    return lines


def _first_requests_table(first: Sequence[tuple[str, float]]) -> list[str]:
    if not first:
        return []
    lines = ["", "First requests after the server reported ready (warmup ran at load):", ""]
    lines += ["| request | latency ms |", "|---|---:|"]
    lines += [f"| {label} | {ms:.1f} |" for label, ms in first]
    return lines
