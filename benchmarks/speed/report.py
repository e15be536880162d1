"""The throughput section of docs/benchmarks.md, made from a `Run` alone: nothing here measures, so a
saved run (`--render`) gives the same tables as the run that saved it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from interleaved import PairedLatency

from .ranking import at, best
from .results import Interleaved, PeerFidelity, Point, Run
from .systems import LATENCY_FIRST_SERVER, SUMMARY_SYSTEMS, SYSTEM_NAMES
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
    served_vs_hf_batched: tuple[float, ...]
    served_vs_peer: tuple[float, ...]
    peer: Point | None
    """The fastest peer within the gate's limit, at its best batch (sweep)."""
    peer_one_clip: Point | None
    """That peer one clip per call (its lone-request latency)."""
    paired: dict[str, PairedLatency]
    """Per server: the c=1 pairs of it and the in-process module."""
    lone: PairedLatency | None
    """The c=1 pairs of the server under test and the HF pipeline, one clip per call."""


def latency_first_last(server: str) -> bool:
    """Sort key: the default server's c=1 pairs first, the latency-first server's after them."""
    return server == LATENCY_FIRST_SERVER


def summary_rows(
    points: Sequence[Point],
    workloads: Sequence[str],
    pairs: Sequence[PairedLatency],
    rounds: dict[str, Interleaved],
    peers: Sequence[PeerFidelity] = (),
) -> list[SummaryRow]:
    passing = tuple(peer.system for peer in peers if peer.passes)
    rows = []
    for name in workloads:
        srv = best(points, "served", name)
        peer = max(
            (found for system in passing if (found := best(points, system, name)) is not None),
            key=lambda point: point.audio_s_per_s,
            default=None,
        )

        def sweep_ratio(baseline: str, name: str = name, srv: Point | None = srv) -> tuple[float, ...]:
            reference = best(points, baseline, name)
            return (srv.audio_s_per_s / reference.audio_s_per_s,) if srv and reference else ()

        measured = rounds.get(name)
        rows.append(
            SummaryRow(
                workload=name,
                best={system.key: best(points, system.key, name) for system in SUMMARY_SYSTEMS},
                rounds=measured is not None,
                served_vs_inprocess=measured.served_vs_inprocess() if measured else sweep_ratio("torchscript"),
                served_vs_hf=measured.served_vs_hf() if measured else sweep_ratio("hf"),
                served_vs_hf_batched=measured.served_vs_hf_batched() if measured else sweep_ratio("hf_batch"),
                served_vs_peer=measured.served_vs_peer()
                if measured and measured.peer
                else ((srv.audio_s_per_s / peer.audio_s_per_s,) if srv and peer else ()),
                peer=peer,
                peer_one_clip=None if peer is None else at(points, peer.system, name, 1),
                paired={pair.server: pair for pair in pairs if pair.workload == name and pair.against != "hf"},
                lone=next((pair for pair in pairs if pair.workload == name and pair.against == "hf"), None),
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


def _peer_cell(point: Point | None) -> str:
    return "-" if point is None else f"{point.audio_s_per_s:.1f} ({SYSTEM_NAMES[point.system]}, B={point.setting})"


def _peer_lone_cell(pair: PairedLatency | None, peer: Point | None) -> str:
    """The served lone request's p50 (c=1 pairs) against the peer's one clip per call p50."""
    if pair is None or peer is None:
        return "-"
    ok = pair.served_p50_ms <= peer.p50_ms + TARGETS.peer_lone_request_ms
    return f"{pair.served_p50_ms:.0f} vs {peer.p50_ms:.0f} ms {verdict(ok)}"


def _lone_cell(pair: PairedLatency | None) -> str:
    if pair is None:
        return "-"
    outcome = pair.verdict(TARGETS.lone_request_ms)
    shown = "**not met**" if outcome == "not met" else outcome
    return (
        f"{pair.served_p50_ms:.0f} vs {pair.inprocess_p50_ms:.0f} ms {shown} "
        f"[{pair.added_q25_ms:+.0f}, {pair.added_q75_ms:+.0f}]"
    )


def markdown(run: Run) -> str:
    points, workloads, context, pairs, rounds = run.points, run.workload_names, run.context, run.c1_pairs, run.rounds
    servers = sorted({pair.server for pair in pairs if pair.against != "hf"}, key=latency_first_last)
    lines = [
        f"Measured {context.date} on {context.machine}; {context.model}; clips: {context.clips}; "
        f"HF pipeline: {context.hf_attention} attention, batch_size={context.hf_batch_size}, "
        f"{context.hf_process}; in-process TorchScript: {context.inprocess_memory}; "
        f"served: {context.served}. Load average (1 min) over the points: {context.load}.",
        "",
        "Throughput in audio-seconds per second (the batch size B or concurrency c it was best at in the sweep). "
        f"Targets: served ≥ {TARGETS.served_vs_hf:g}x the HF pipeline one clip per call and ≥ "
        f"{TARGETS.served_vs_hf_batched:g}x it with batch_size, ≥ {TARGETS.served_vs_peer:g}x the fastest peer "
        "within the gate's limit of fp32 at its best batch (OpenVINO or ONNX Runtime, a plain loop: the peers "
        f"table), ≥ {TARGETS.served_vs_inprocess:g}x the in-process module it serves; a lone request served no "
        f"slower than one clip through the HF pipeline, nor {TARGETS.peer_lone_request_ms:g} ms slower than one "
        "clip through the best peer "
        f"(p50); latency added at c=1 ≤ {TARGETS.added_latency_ms:g} ms over in-process batch 1. "
        "The ratios are medians over rounds that measure each system's best setting "
        "from the sweep and the one beside it again in turn, taking each round's faster of the two (in brackets "
        "their range; '(sweep)': the sweep's ratio, without rounds). The lone request: served p50 vs HF p50 "
        "over pairs of one clip through the pipeline then the same clip served, alternately [the pairs' "
        "interquartile range of served minus HF]. "
        "Added at c=1 is the median over pairs of one clip in-process then the same clip "
        "served, alternately, with the same threads on both sides, [its interquartile range]: met when the median "
        "is within the target, not met when the lower quartile is above it, within noise otherwise; then the "
        "median time of a served request outside the classifier's compute (gRPC, ensemble, preprocess, IPC: "
        "Triton's statistics per request), which the noise of the model's own time does not blur.",
        "",
        "| workload | "
        + "".join(f"{system.column} | " for system in SUMMARY_SYSTEMS)
        + "best peer within the gate | served / HF | served / HF batched | served / best peer | "
        "served / in-process | lone request p50, served vs HF | lone request p50, served vs best peer one clip | "
        + " | ".join(f"added at c=1, {server} server" for server in servers)
        + " |",
        "|---|" + "---:|" * (len(SUMMARY_SYSTEMS) + 7) + "---:|" * len(servers),
    ]
    for row in summary_rows(points, workloads, pairs, rounds, run.peers):
        lines.append(
            f"| {row.workload} "
            + "".join(f"| {_cell(row.best[system.key], system.setting)} " for system in SUMMARY_SYSTEMS)
            + f"| {_peer_cell(row.peer)} "
            f"| {_ratio_cell(row.served_vs_hf, TARGETS.served_vs_hf, rounds=row.rounds)} "
            f"| {_ratio_cell(row.served_vs_hf_batched, TARGETS.served_vs_hf_batched, rounds=row.rounds)} "
            f"| {_ratio_cell(row.served_vs_peer, TARGETS.served_vs_peer, rounds=row.rounds)} "
            f"| {_ratio_cell(row.served_vs_inprocess, TARGETS.served_vs_inprocess, rounds=row.rounds)} "
            f"| {_lone_cell(row.lone)} "
            f"| {_peer_lone_cell(row.lone, row.peer_one_clip)} "
            + "".join(f"| {_added_cell(row.paired.get(server))} " for server in servers)
            + "|"
        )
    lines += _peers_table(run) + _rounds_table(rounds) + _pairs_table(pairs, workloads)
    lines += _points_table(points, workloads)
    lines += _arithmetic_table(run)
    lines += _breakdown_table(points) + _first_requests_table(run.first_requests)
    if run.notes:
        lines += [""] + [f"- {note}" for note in run.notes]
    lines += ["", f"Command: `{context.command}`; wall time {context.wall_min:.1f} min."]
    return "\n".join(lines)


def _peers_table(run: Run) -> list[str]:
    """Every peer: its fidelity on the gate's speech, and its best point per workload one clip per call and batched."""
    if not run.peers:
        return []
    names = run.workload_names
    lines = [
        "",
        "Peers: the same model on another engine, a plain loop in a process of its own on the same threads "
        "(benchmarks/speed/peers.py); max |Δprob| against eager fp32 on the export gate's speech, one clip per "
        "call; audio-s/s one clip per call / in padded batches of 4:",
        "",
        "| peer | max \|Δprob\| | within the gate | " + " | ".join(names) + " |",
        "|---|---:|---|" + "---:|" * len(names),
    ]
    for peer in run.peers:
        cells = []
        for name in names:
            one, four = at(run.points, peer.system, name, 1), at(run.points, peer.system, name, 4)
            cells.append(" / ".join("-" if p is None else f"{p.audio_s_per_s:.1f}" for p in (one, four)))
        lines.append(
            f"| {SYSTEM_NAMES[peer.system]} | {peer.max_abs_prob_diff:.4f} | {'yes' if peer.passes else 'no'} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _rounds_table(rounds: dict[str, Interleaved]) -> list[str]:
    if not rounds:
        return []
    lines = [
        "",
        "The rounds (audio-s/s; each round measures in-process, served and HF in turn at the sweep's best "
        "setting of each, then at the setting beside it; the faster of each system's two is shown):",
        "",
        "| workload | round | HF, 1 clip/call | HF, batch_size | best peer | in-process | served | served / HF "
        "| served / HF batched | served / best peer | served / in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, measured in rounds.items():
        count = len(measured.served)
        one, batched = measured.hf or (None,) * count, measured.hf_batch or (None,) * count
        peer = measured.peer or (None,) * count
        vs_one = measured.served_vs_hf() or (None,) * count
        vs_batched = measured.served_vs_hf_batched() or (None,) * count
        vs_peer = measured.served_vs_peer() or (None,) * count
        rows = zip(measured.inprocess, measured.served, measured.served_vs_inprocess(), strict=True)
        for index, (ts, srv, ratio) in enumerate(rows):
            lines.append(
                f"| {name} | {index + 1} | {_cell(one[index], 'B=')} | {_cell(batched[index], 'B=')} "
                f"| {_cell(peer[index], 'B=')} | {_cell(ts, 'B=')} | {_cell(srv, 'c=')} | {_plain(vs_one[index])} "
                f"| {_plain(vs_batched[index])} | {_plain(vs_peer[index])} | {ratio:.2f} |"
            )
    return lines


def _plain(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _arithmetic_table(run: Run) -> list[str]:
    """Each system's best point as the arithmetic it achieved, against the peak of its precision."""
    arithmetic = run.arithmetic
    if arithmetic is None:
        return []
    widest = max((p.threads for p in arithmetic.peaks), default=0)
    peaks = ", ".join(
        f"{p.dtype} {p.gflop_per_s:,.0f} GFLOP/s"
        + (f" on {p.threads} thread{'s' * (p.threads > 1)}" if p.threads else "")
        for p in arithmetic.peaks
    )
    systems = [system for system in SUMMARY_SYSTEMS if system.key in arithmetic.precision]
    lines = [
        "",
        f"Arithmetic: the model's GFLOP per audio-second (convolutions, projections, attention and feed-forward "
        f"products; norms and activations left out) times each system's best throughput, against this "
        f"machine's matrix-product peak in that system's precision ({peaks}; 2048-cube products, the best of "
        f"several; the in-process 1-thread row against the 1-thread peak, every other system against "
        f"{widest or 'the device'}'s):",
        "",
        "| workload | GFLOP per audio-s | " + " | ".join(system.column or system.name for system in systems) + " |",
        "|---|---:|" + "---:|" * len(systems),
    ]
    for name in run.workload_names:
        gflop = arithmetic.gflop_per_audio_s.get(name)
        if gflop is None:
            continue
        cells = []
        for system in systems:
            point = best(run.points, system.key, name)
            peak = arithmetic.peak(arithmetic.precision[system.key], 1 if system.key == "torchscript_1t" else widest)
            if point is None or peak is None:
                cells.append("-")
                continue
            achieved = point.audio_s_per_s * gflop
            cells.append(f"{achieved:,.0f} ({achieved / peak.gflop_per_s:.0%} of {peak.dtype})")
        lines.append(f"| {name} | {gflop:.1f} | " + " | ".join(cells) + " |")
    return lines


def _pairs_table(pairs: Sequence[PairedLatency], workloads: Sequence[str]) -> list[str]:
    if not pairs:
        return []
    lines = [
        "",
        "c=1, served and in-process (or the HF pipeline, one clip per call) alternately on the same clips (ms; "
        "classifier compute: Triton's statistics for each served request; added: served minus the other side):",
        "",
        "| workload | server | paired with | pairs | its p50 | served p50 | classifier compute p50 "
        "| added: median (IQR) | outside the model p50 | load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = [p for p in pairs if p.against == "hf"] + [p for p in pairs if p.against != "hf"]
    for pair in sorted(
        order, key=lambda p: (p.against != "hf", latency_first_last(p.server), list(workloads).index(p.workload))
    ):
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
