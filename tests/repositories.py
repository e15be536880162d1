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

    fp32 unless the options say otherwise: the tests compare served answers with eager HF to 1e-4,
    which only fp32 keeps (the default `auto` takes bf16 on CPUs that have it)."""
    if "--dtype" not in options:
        options = ("--dtype", "fp32", *options)
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
