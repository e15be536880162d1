"""What the report says about where and how a run measured: the machine, the model, each system's setup."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from emotion_build.repository.description import BatchingSettings, Provenance, Target
from emotion_build.server.install import find_tritonserver

from .results import Point, RunContext
from .workloads import Workload


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} ({device})"
    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"


def describe_served(
    args: argparse.Namespace, settings: BatchingSettings, target: Target, provenance: Provenance
) -> str:
    """The served system as the report's first sentence names it: server, target and batching settings."""
    cuda = args.device.startswith("cuda")
    runner = "the Python-backend runner on KIND_GPU" if cuda else "the Python-backend runner"
    grouping = (
        "whole batches"
        if math.isinf(settings.max_padding_fraction)
        else f"length groups ≤ {settings.max_padding_fraction:g} padding"
    )
    threads = "" if cuda else f" x {settings.intra_op_threads or 'default'} thread(s)"
    return (
        "skipped"
        if "served" in args.skip
        else f"a running server at {args.server_url}"
        if args.server_url
        else f"pip tritonserver {find_tritonserver().version}, {target} target ({runner}), {provenance.dtype} "
        f"on {provenance.engine}, "
        f"max batch {settings.max_batch_size}"
        + (f" (a longer queue cut at {settings.cut})" if settings.cut else "")
        + f", queue delay {settings.max_queue_delay_us} µs, "
        f"{settings.classifier_instances} classifier instance(s){threads}, "
        f"{settings.preprocess_instances} preprocess instances, {grouping}"
        + (
            f", each runner keeps ≤ {settings.keep_freed_memory_mb} MiB freed memory"
            if settings.keep_freed_memory_mb
            else ""
        )
    )


def run_context(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    *,
    provenance: Provenance,
    kind: str,
    workloads: Sequence[Workload],
    kept_mib: int,
    hf_attention: str,
    served: str,
    points: Sequence[Point],
    started: float,
) -> RunContext:
    """`started`: the run's `time.perf_counter()` at its start; the wall time ends now."""
    loads = [p.load for p in points] or [os.getloadavg()[0]]
    return RunContext(
        date=datetime.date.today().isoformat(),
        machine=machine_name(args.device),
        model=f"{provenance.source_model}{' (untrained)' if provenance.untrained else ''}",
        clips=f"{kind}, {len(workloads[0].clips)} per fixed length, mixed {len(workloads[-1].clips)} of 1-10 s",
        hf_attention=hf_attention,
        hf_batch_size=args.hf_batch_size,
        hf_process="in its own process with malloc's defaults, as a user's service runs it"
        if args.hf_malloc == "defaults"
        else f"in its own process keeping ≤ {kept_mib} MiB freed memory like the runner (--hf-malloc runner)",
        inprocess_memory=f"keeps ≤ {kept_mib} MiB freed memory, as the served runner does"
        if kept_mib
        else "malloc defaults, as the served runner",
        served=served,
        load=f"{min(loads):.1f}-{max(loads):.1f}",
        command="python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        wall_min=(time.perf_counter() - started) / 60.0,
    )
