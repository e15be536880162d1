"""NVIDIA's load generator runs against the served ensemble without errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from emotion_build.perf import perf_analyzer_command, perf_analyzer_env, write_input_data


def test_short_perf_analyzer_run_against_the_ensemble(triton, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 16000, 40000)]
    command = perf_analyzer_command(
        triton.endpoints.grpc_url,
        input_data=write_input_data(tmp_path / "clips.json", clips),
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
