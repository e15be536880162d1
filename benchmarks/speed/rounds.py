"""The ratios between systems: each system's contenders measured again in turn, round by round."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from interleaved import alternate

from .hf import HFProcess
from .inprocess import ServedModule, torchscript_point
from .peers import PeerProcess
from .perf_analyzer import perf_analyzer_point
from .progress import describe_point, log
from .ranking import fastest_per_round
from .results import Interleaved, Point
from .systems import SYSTEM_NAMES
from .workloads import Workload


def twice(measures: list[Callable[[], Point]]) -> list[Callable[[], Point]]:
    """Two measurements of a system per round: its two contenders, or its one contender twice."""
    return measures if len(measures) >= 2 else measures * 2


def interleaved_rounds(
    module: ServedModule,
    grpc_url: str,
    pgid: int | None,
    workload: Workload,
    *,
    inprocess: Sequence[Point],
    served: Sequence[Point],
    hf: Sequence[Point],
    hf_process: HFProcess | None,
    peer: Sequence[Point] = (),
    peer_process: PeerProcess | None = None,
    rounds: int,
    budget_s: float,
    device: str,
) -> Interleaved:
    """The sweep's contenders of each system again (`ranking.contenders`), all of them in every round:
    first each system's best, then each one's second, so that drift within a round falls on every system.
    Every system is measured twice a round, its round's figure the faster of the two (a system with one
    contender, the HF pipeline one clip per call, runs it twice), each after the same warm-up pass."""
    hf_rows = tuple(hf) if hf_process is not None else ()  # measured again only where the pipeline's process runs
    log(
        f"{workload.name} in rounds: "
        + "".join(f"{SYSTEM_NAMES[row.system]} (B={row.setting}), " for row in hf_rows)
        + f"in-process B={'/'.join(str(p.setting) for p in inprocess)}, "
        + f"served c={'/'.join(str(p.setting) for p in served)}; {rounds} rounds"
    )
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as scratch:

        def served_at(concurrency: int) -> Callable[[], Point]:
            def run() -> Point:
                point = perf_analyzer_point(
                    grpc_url,
                    workload,
                    concurrency,
                    scratch=Path(scratch),
                    expected_clips_per_s=inprocess[0].clips_per_s,
                    budget_s=budget_s,
                    server_pgid=pgid,
                )
                log(describe_point(point))
                return point

            return run

        def inprocess_at(size: int) -> Callable[[], Point]:
            return lambda: torchscript_point(module, workload, size, threads=None, budget_s=budget_s, device=device)

        def hf_at(process: HFProcess, row: Point) -> Callable[[], Point]:
            size = row.setting if row.system == "hf_batch" else None
            return lambda: process.point(workload, batch_size=size, budget_s=budget_s)

        def peer_at(process: PeerProcess, row: Point) -> Callable[[], Point]:
            return lambda: process.point(workload, batch_size=row.setting, budget_s=budget_s)

        systems = [
            twice([inprocess_at(p.setting) for p in inprocess]),
            twice([served_at(p.setting) for p in served]),
            *([twice([hf_at(hf_process, row)]) for row in hf_rows] if hf_process is not None else []),
            *([twice([peer_at(peer_process, row) for row in peer])] if peer_process is not None and peer else []),
        ]
        order = [measure for rank in range(2) for each in systems for measure in each[rank : rank + 1]]
        measured = alternate(order, rounds=rounds)
    result = Interleaved(
        inprocess=fastest_per_round(measured, "torchscript"),
        served=fastest_per_round(measured, "served"),
        hf=fastest_per_round(measured, "hf") if any(p.system == "hf" for p in hf_rows) else (),
        measured=tuple(point for row in measured for point in row),
        hf_batch=fastest_per_round(measured, "hf_batch") if any(p.system == "hf_batch" for p in hf_rows) else (),
        peer=fastest_per_round(measured, peer_process.system) if peer_process is not None and peer else (),
    )
    log(
        f"  served/in-process {np.median(result.served_vs_inprocess()):.2f}"
        + (f", served/HF {np.median(result.served_vs_hf()):.2f}" if result.hf else "")
        + (f", served/HF batched {np.median(result.served_vs_hf_batched()):.2f}" if result.hf_batch else "")
        + (f", served/best peer {np.median(result.served_vs_peer()):.2f}" if result.peer else "")
    )
    return result
