"""Latency serving adds at c=1: one clip in-process, then the same clip served, alternately."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path

from interleaved import PairedLatency, c1_pairs

from emotion_build.repository.description import BatchingSettings
from emotion_build.triton_models.waveform import FloatArray

from .hf import HFProcess
from .inprocess import ServedModule, inprocess_call, torch_threads
from .progress import log
from .served import rewrite_configs, served, single_requests
from .systems import LATENCY_FIRST_SERVER
from .timing import synchronise
from .workloads import Workload

LATENCY_FIRST = dataclasses.replace(BatchingSettings(), classifier_instances=1, intra_op_threads=0)
"""The cpu export a latency-first deployment would choose (`--classifier-instances 1
--intra-op-threads 0`): a lone request gets every core, as the in-process module at batch 1 does."""


def paired_c1(
    module: ServedModule,
    grpc_url: str,
    workload: Workload,
    *,
    threads: int | None,
    server: str,
    instances: int,
    budget_s: float,
    min_pairs: int,
    device: str,
) -> PairedLatency:
    """c=1, served and in-process batch 1 alternately on the same clips (interleaved.c1_pairs).

    Triton hands each lone request to whichever instance is free, so three untimed requests per
    instance make it all but certain that every instance has met the length before the pairs."""
    run = inprocess_call(module, device)
    inprocess = "default threads" if threads is None else f"{threads} thread{'s' if threads > 1 else ''}"
    log(f"c=1 on {workload.name}: the {server} server and in-process batch 1 ({inprocess}), alternately")

    def local(clip: FloatArray) -> None:
        run([clip])
        synchronise(device)

    with single_requests(grpc_url) as call, torch_threads(threads):
        paired = c1_pairs(
            local,
            call,
            workload.clips,
            workload=workload.name,
            server=server,
            inprocess=inprocess,
            budget_s=budget_s,
            min_pairs=min_pairs,
            served_warmup=3 * instances,
        )
    log(
        f"  added at c=1: {paired.added_p50_ms:+.1f} ms (IQR {paired.added_q25_ms:+.1f} to {paired.added_q75_ms:+.1f}, "
        f"{paired.pairs} pairs); outside the model {paired.outside_model_p50_ms:.1f} ms"
    )
    return paired


def lone_request_pairs(
    hf: HFProcess, grpc_url: str, workload: Workload, *, server: str, instances: int, budget_s: float, min_pairs: int
) -> PairedLatency:
    """c=1, one clip through the HF pipeline (as the model card calls it, in its own process on its
    default threads) then the same clip served, alternately: what a user who swaps the pipeline for the
    server waits for a lone clip (the target: no longer)."""
    log(f"lone request on {workload.name}: the HF pipeline ({hf.dtype}) and the {server} server, alternately")
    with single_requests(grpc_url) as call:
        paired = c1_pairs(
            hf.once,
            call,
            workload.clips,
            workload=workload.name,
            server=server,
            inprocess=f"HF pipeline ({hf.dtype}), one clip per call",
            budget_s=budget_s,
            min_pairs=min_pairs,
            served_warmup=3 * instances,
            against="hf",
        )
    log(
        f"  served p50 {paired.served_p50_ms:.0f} ms, HF p50 {paired.inprocess_p50_ms:.0f} ms: "
        f"{paired.added_p50_ms:+.1f} ms (IQR {paired.added_q25_ms:+.1f} to {paired.added_q75_ms:+.1f})"
    )
    return paired


def latency_first_pairs(
    repository: Path,
    scratch: Path,
    module: ServedModule,
    workloads: Sequence[Workload],
    budget_s: float,
    min_pairs: int,
) -> list[PairedLatency]:
    """c=1 through a second server on a copy of the repository with the LATENCY_FIRST settings,
    after the first has stopped, paired with in-process batch 1 on torch's default threads: the
    added latency of serving, with the threads held equal."""
    copy = scratch / LATENCY_FIRST_SERVER
    shutil.copytree(repository, copy)
    rewrite_configs(copy, LATENCY_FIRST)
    log("latency-first server (1 classifier instance x default threads)")
    with served(copy, None) as (url, _, _):
        return [
            paired_c1(
                module,
                url,
                w,
                threads=None,
                server=LATENCY_FIRST_SERVER,
                instances=LATENCY_FIRST.classifier_instances,
                budget_s=budget_s,
                min_pairs=min_pairs,
                device="cpu",
            )
            for w in workloads
        ]
