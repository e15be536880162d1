"""The served system under `perf_analyzer`: one point per concurrency, with where a request's time goes."""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

from emotion_build.repository.description import AUDIO_INPUT, ENSEMBLE_MODEL
from emotion_build.server.perf_analyzer import PerfRow, perf_analyzer_command, perf_analyzer_env, read_perf_csv
from emotion_client.perf_data import write_perf_data

from .accounting import children_cpu_s, group_cpu_s
from .results import Point
from .workloads import Workload


def perf_analyzer_point(
    grpc_url: str,
    workload: Workload,
    concurrency: int,
    *,
    scratch: Path,
    expected_clips_per_s: float,
    budget_s: float,
    server_pgid: int | None,
) -> Point:
    data = write_perf_data(scratch / f"{workload.name.replace(' ', '')}.json", workload.clips, AUDIO_INPUT)
    report = scratch / "perf.csv"
    report.unlink(missing_ok=True)
    # perf_analyzer needs three windows to call a measurement stable; each gets a third of the budget.
    per_window = max(2 * concurrency, math.ceil(expected_clips_per_s * budget_s / 3))
    command = perf_analyzer_command(
        grpc_url,
        input_data=data,
        concurrency=(concurrency,),
        extra_args=[
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(per_window),
            "--max-trials",
            "3",
            "--stability-percentage",
            "100000",
            "-f",
            str(report),
        ],
    )
    warm_pass(grpc_url, workload)
    cpu_start = children_cpu_s() + (group_cpu_s(server_pgid) if server_pgid else 0.0)
    result = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True, timeout=900)
    cpu = children_cpu_s() + (group_cpu_s(server_pgid) if server_pgid else 0.0) - cpu_start
    if result.returncode != 0 or not report.exists():
        lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        reasons = sorted({line for line in lines if "error" in line.lower() or "failed" in line.lower()})
        raise RuntimeError(f"exit status {result.returncode}: {'; '.join(reasons or lines[-1:])[:400]}")
    (row,) = read_perf_csv(report.read_text())
    counted = [int(n) for n in _request_counts(result.stdout)]
    audio_rate = row.inferences_per_s * workload.mean_s
    cpu_per_audio = None
    if server_pgid and counted:
        # CPU of the whole run over the audio of every request it sent (its windows and their ramp-up).
        cpu_per_audio = cpu / (sum(counted) * workload.mean_s)
    return Point(
        "served",
        workload.name,
        concurrency,
        audio_rate,
        row.inferences_per_s,
        row.p50_ms,
        row.p95_ms,
        row.p99_ms,
        cpu_per_audio,
        os.getloadavg()[0],
        detail=_breakdown(row),
    )


def warm_pass(grpc_url: str, workload: Workload) -> None:
    """Each of the workload's clips once through the ensemble, untimed: the warm-up every system gets
    before it is measured (timing.timed_loop's pass over its batches)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        for clip in workload.clips:
            tensor = grpcclient.InferInput(AUDIO_INPUT, [1, clip.size], "FP32")
            tensor.set_data_from_numpy(clip[None, :])
            client.infer(ENSEMBLE_MODEL, [tensor])
    finally:
        client.close()


def _request_counts(stdout: str) -> list[str]:
    return re.findall(r"Client:\s+Request count: (\d+)", stdout)


def _breakdown(row: PerfRow) -> dict[str, float]:
    return {
        "client_send_ms": row.client_send_ms,
        "network_ms": row.network_ms,
        "server_queue_ms": row.server_queue_ms,
        "server_compute_ms": row.server_compute_ms,
        "client_recv_ms": row.client_recv_ms,
    }
