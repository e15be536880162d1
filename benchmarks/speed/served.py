"""The server under test: starting it, its first requests, and its concurrency sweep."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from emotion_build.repository.configs import all_configs, render
from emotion_build.repository.description import (
    AUDIO_INPUT,
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    PROVENANCE_FILE,
    BatchingSettings,
    ModelDescription,
    Provenance,
)
from emotion_build.server.launcher import TritonServer
from emotion_build.triton_models.waveform import FloatArray

from .perf_analyzer import perf_analyzer_point
from .progress import describe_point, log
from .results import Point
from .sdk import sdk_point
from .workloads import RATE, Workload


@contextlib.contextmanager
def served(repository: Path, server_url: str | None) -> Iterator[tuple[str, int | None, float | None]]:
    """(gRPC url, process group to account CPU to, seconds to ready) of a server on `repository`."""
    if server_url is not None:
        yield server_url, None, None
        return
    start = time.perf_counter()
    with TritonServer(repository) as server:
        ready_s = time.perf_counter() - start
        yield server.endpoints.grpc_url, server.pid, ready_s


def rewrite_configs(repository: Path, batching: BatchingSettings) -> None:
    """Point an exported cpu repository at other batching settings without tracing again: everything else
    (weights' precision, limits, labels) as the export recorded it."""
    provenance = Provenance.from_json((repository / CLASSIFIER_MODEL / "1" / PROVENANCE_FILE).read_text())
    if provenance.description is None:
        raise ValueError(f"{repository} predates export.json's description: export it again")
    description = dataclasses.replace(ModelDescription.from_record(provenance.description), batching=batching)
    for name, config in all_configs(description, "cpu").items():
        (repository / name / "config.pbtxt").write_text(render(config))


@contextlib.contextmanager
def single_requests(grpc_url: str) -> Iterator[Callable[[FloatArray], tuple[float, float]]]:
    """A call sending one clip to the ensemble; it returns (wall seconds, the classifier's compute
    seconds for that request, from Triton's statistics). Only meaningful with nothing else in flight."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)

    def compute_ns() -> int:
        stats = client.get_inference_statistics(CLASSIFIER_MODEL, as_json=True)
        # Protobuf's JSON leaves zeros out: a server without warmup has no "ns" before its first request.
        return sum(int(model["inference_stats"]["compute_infer"].get("ns", 0)) for model in stats["model_stats"])

    def call(clip: FloatArray) -> tuple[float, float]:
        tensor = grpcclient.InferInput(AUDIO_INPUT, [1, clip.size], "FP32")
        tensor.set_data_from_numpy(clip[None, :].astype(np.float32))
        before = compute_ns()
        start = time.perf_counter()
        client.infer(ENSEMBLE_MODEL, [tensor])
        wall = time.perf_counter() - start
        return wall, (compute_ns() - before) / 1e9

    try:
        yield call
    finally:
        client.close()


def first_requests(grpc_url: str, workloads: Sequence[Workload]) -> list[tuple[str, float]]:
    """Latency of the first requests a freshly started server answers (its warmup already ran)."""
    shortest = min(workloads, key=lambda w: w.mean_s).clips[0]
    longest = max(workloads, key=lambda w: w.mean_s).clips[0]
    with single_requests(grpc_url) as call:
        return [
            (label, call(clip)[0] * 1000.0)
            for label, clip in (
                (f"first request ({shortest.size / RATE:g} s clip)", shortest),
                (f"second request ({shortest.size / RATE:g} s clip)", shortest),
                (f"first {longest.size / RATE:g} s clip (a new length)", longest),
                (f"second {longest.size / RATE:g} s clip", longest),
            )
        ]


def served_points(
    grpc_url: str,
    pgid: int | None,
    workloads: Sequence[Workload],
    *,
    concurrencies: Sequence[int],
    budget_s: float,
    expected: dict[str, float],
    with_sdk: bool,
    failures: list[str],
) -> list[Point]:
    """Every point that could be measured; a point that failed (e.g. requests rejected after the
    queue timeout on an overloaded CPU) is reported in `failures` instead of ending the run."""
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as scratch:
        for workload in workloads:
            for concurrency in concurrencies:
                log(f"perf_analyzer on {workload.name}: concurrency {concurrency}")
                try:
                    point = perf_analyzer_point(
                        grpc_url,
                        workload,
                        concurrency,
                        scratch=Path(scratch),
                        expected_clips_per_s=expected[workload.name],
                        budget_s=budget_s,
                        server_pgid=pgid,
                    )
                except RuntimeError as error:
                    failures.append(f"perf_analyzer on {workload.name} at c={concurrency} failed: {error}")
                    log(failures[-1])
                    continue
                points.append(point)
                log(describe_point(point))
            measured = [p for p in points if p.workload == workload.name]
            if with_sdk and measured:
                best = max(measured, key=lambda p: p.audio_s_per_s)
                log(f"SDK classify_many on {workload.name}: concurrency {best.setting}")
                try:
                    point = sdk_point(
                        grpc_url,
                        workload,
                        best.setting,
                        budget_s=budget_s,
                        expected_clips_per_s=expected[workload.name],
                    )
                except RuntimeError as error:
                    failures.append(f"SDK classify_many on {workload.name} at c={best.setting} failed: {error}")
                    log(failures[-1])
                    continue
                points.append(point)
                log(describe_point(point))
    return points
