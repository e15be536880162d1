"""Exporting test repositories the way an operator does: `python -m emotion_build export` in a child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def export_cpu_repository(model_dir: Path, output: Path, *options: str) -> Path:
    """A CPU-target repository of the checkpoint in `model_dir`, offline, with extra export options."""
    return export_repository(model_dir, output, "cpu", *options)


def export_repository(model_dir: Path, output: Path, target: str, *options: str) -> Path:
    """A repository of `target` (gpu with --classifier-on-cpu: the libtorch classifier on this CPU).

    TorchScript in fp32 unless the options say otherwise: the tests compare served answers with eager
    HF to 1e-4, which only fp32 keeps, and the shared servers cover the TorchScript runner this way;
    what `auto` picks (OpenVINO, int8 or bf16 on CPUs that compute them) is served as `python-auto`."""
    if "--dtype" not in options:
        options = ("--dtype", "fp32", *options)
    if "--engine" not in options and target == "cpu":
        options = ("--engine", "torchscript", *options)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_build",
            "export",
            "--model",
            str(model_dir),
            "--target",
            target,
            "--output",
            str(output),
            *options,
        ],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
    )
    return output


def refused_export(output: Path, *arguments: str, timeout_s: float) -> str:
    """`export` (offline) with `arguments`, which must fail with exit status 2, one line on stderr and
    no traceback, and write nothing to `output`: that line."""
    result = subprocess.run(
        [sys.executable, "-m", "emotion_build", "export", *arguments, "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=timeout_s,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not output.exists()
    return lines[0]
