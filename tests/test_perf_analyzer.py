"""NVIDIA's load generator runs against the served ensemble without errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from emotion_build.repository.description import AUDIO_INPUT
from emotion_build.server.launcher import TritonServer
from emotion_build.server.perf_analyzer import perf_analyzer_command, perf_analyzer_env
from emotion_client.perf_data import write_perf_data


def test_short_perf_analyzer_run_against_the_ensemble(triton: TritonServer, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 16000, 40000)]
    command = perf_analyzer_command(
        triton.endpoints.grpc_url,
        input_data=write_perf_data(tmp_path / "clips.json", clips, AUDIO_INPUT),
        concurrency=(1, 2),
        measurement_interval_ms=1500,
        extra_args=["--max-trials", "4", "--stability-percentage", "100"],
    )
    result = subprocess.run(command, env=perf_analyzer_env(), capture_output=True, text=True, timeout=240)
    print(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec", result.stdout)
    assert [int(c) for c, _ in rows] == [1, 2]
    assert all(float(t) > 0 for _, t in rows)


def test_perf_analyzer_csv_is_read_in_milliseconds() -> None:
    from emotion_build.server.perf_analyzer import read_perf_csv

    text = (
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
        "1,12.5,14,1692,2,110,72362,1582,7,75350,80363,93708,98403\n"
    )
    (row,) = read_perf_csv(text)
    assert row.concurrency == 1 and row.inferences_per_s == 12.5
    assert row.p50_ms == 75.35 and row.p99_ms == 98.403
    assert row.server_compute_ms == pytest.approx((110 + 72362 + 1582) / 1000)
    assert row.network_ms == 1.692 and row.server_queue_ms == 0.002
