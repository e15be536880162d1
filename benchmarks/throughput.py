"""Speed of the served system next to the Hugging Face pipeline and the in-process TorchScript limit.

One run on one machine, full-size wav2vec2-base (random weights unless --model: speed does not
depend on weight values), espeak-ng speech of 1 s, 4 s, 10 s and mixed lengths:

1. `pipeline("audio-classification")` as the model card uses it (one clip per call), and with
   `batch_size`, in a process of its own with malloc's defaults, as a user's service runs it;
2. the exported `model.pt` in this process (normalisation + ragged batch + TorchScript) at batch
   sizes 1, 2, 4, 8, with malloc set up as the served cpu runner sets it (keeping freed memory):
   the best of them is the limit of this hardware;
3. the served ensemble (preprocess -> classifier) through gRPC: `perf_analyzer` over a concurrency
   sweep, and the SDK's `AsyncEmotionClient.classify_many`.

The ratios and the latency added at concurrency 1 are then measured alternately, since the same
point drifts by up to a third within minutes on a shared VM (benchmarks/interleaved.py): rounds of
each system's best setting and the one beside it in turn, and pairs of one clip in-process then
the same clip served.

It writes the tables into docs/benchmarks.md (between its `throughput` markers) and a plot of
throughput and p99 latency against concurrency to docs/benchmarks.png.

    make bench                                       # the full run (about 40 min on 2 CPU cores)
    python benchmarks/throughput.py --quick          # about 14 min: fewer points, shorter windows
    python benchmarks/throughput.py --tune           # dynamic-batching settings, one server each
    # a GPU machine: the pip tritonserver serves a gpu-python export (fp16) it makes itself
    python benchmarks/throughput.py --device cuda
    # or the libtorch classifier in NVIDIA's container: export --target gpu, serve it (docker/), then
    python benchmarks/throughput.py --device cuda --repository model_repository --server-url localhost:8001

On CUDA the tables go between the `throughput-gpu` markers and the plot to docs/benchmarks-gpu.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from batch_drift import speech_clips
from interleaved import MIN_PAIRS, PairedLatency, alternate, c1_pairs
from tritonclient.utils import InferenceServerException

from emotion_build.configs import all_configs, render
from emotion_build.description import (
    AUDIO_INPUT,
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    BatchingSettings,
    Provenance,
    Target,
)
from emotion_build.export import describe, export
from emotion_build.loading import LoadedModel, load_pretrained, random_model
from emotion_build.perf import PerfRow, perf_analyzer_command, perf_analyzer_env, read_perf_csv, write_input_data
from emotion_build.server import ServerError, TritonServer, find_tritonserver
from emotion_build.triton_models.heap import keep_freed_memory
from emotion_build.triton_models.ragged import concatenate
from emotion_build.triton_models.waveform import FloatArray, normalise

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
MARKERS = {
    "throughput": ("<!-- throughput:begin -->", "<!-- throughput:end -->"),
    "tune": ("<!-- tune:begin -->", "<!-- tune:end -->"),
    "fp16": ("<!-- fp16:begin -->", "<!-- fp16:end -->"),
    "throughput-gpu": ("<!-- throughput-gpu:begin -->", "<!-- throughput-gpu:end -->"),
    "fp16-gpu": ("<!-- fp16-gpu:begin -->", "<!-- fp16-gpu:end -->"),
    "jit": ("<!-- jit:begin -->", "<!-- jit:end -->"),
    "jit-gpu": ("<!-- jit-gpu:begin -->", "<!-- jit-gpu:end -->"),
    "overhead": ("<!-- overhead:begin -->", "<!-- overhead:end -->"),
}
TARGETS = {"served_vs_inprocess": 0.9, "served_vs_hf": 1.0, "added_latency_ms": 5.0}
GPU_TARGET = {"audio_s_per_s": 10_000.0, "p99_ms": 100.0}
"""The issue's target on one H100: served throughput at a p99 latency no worse than this."""

SYSTEM_NAMES = {
    "hf": "HF pipeline, one clip per call",
    "hf_batch": "HF pipeline, batch_size",
    "torchscript": "in-process TorchScript",
    "torchscript_1t": "in-process TorchScript, 1 thread",
    "served": "served, perf_analyzer (gRPC)",
    "sdk": "served, SDK classify_many",
}
HF_SYSTEMS = ("hf", "hf_batch")
"""The HF pipeline's rows; the better of them is the one the targets compare with."""
LATENCY_FIRST_SERVER = "latency-first"
LATENCY_FIRST = dataclasses.replace(BatchingSettings(), classifier_instances=1, intra_op_threads=0)
"""The cpu export a latency-first deployment would choose (`--classifier-instances 1
--intra-op-threads 0`): a lone request gets every core, as the in-process module at batch 1 does."""


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    clips: tuple[FloatArray, ...]

    @property
    def mean_s(self) -> float:
        return float(np.mean([clip.size for clip in self.clips])) / RATE


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured configuration: a system on a workload at one batch size or concurrency."""

    system: str
    workload: str
    setting: int
    """Batch size (HF, TorchScript) or concurrency (served)."""
    audio_s_per_s: float
    clips_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s_per_audio_s: float | None
    """CPU seconds spent (every process of the system, the load generator included) per audio second."""
    load: float
    """1-minute load average when the point finished: other work on the machine skews everything."""
    detail: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Interleaved:
    """A workload's best settings of each system measured again in turn, round by round: per round
    the faster of each system's contenders (`contenders`)."""

    inprocess: tuple[Point, ...]
    served: tuple[Point, ...]
    hf: tuple[Point, ...] = ()
    """Empty where the HF pipeline was skipped."""
    measured: tuple[Point, ...] = ()
    """Every point the rounds measured, the slower contenders included."""

    def served_vs_inprocess(self) -> tuple[float, ...]:
        return tuple(s.audio_s_per_s / i.audio_s_per_s for s, i in zip(self.served, self.inprocess, strict=True))

    def served_vs_hf(self) -> tuple[float, ...]:
        if not self.hf:
            return ()
        return tuple(s.audio_s_per_s / h.audio_s_per_s for s, h in zip(self.served, self.hf, strict=True))


# --------------------------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles_ms(latencies_s: Sequence[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(latencies_s) * 1000.0, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def group_processes(pgid: int) -> Iterator[tuple[str, float]]:
    """Command line and CPU seconds so far of every live process of a process group (tritonserver
    and its stubs)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            command = (stat.parent / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
        yield command, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by every live process of a process group."""
    return sum(seconds for _, seconds in group_processes(pgid))


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_loop(
    call: Callable[[list[FloatArray]], object],
    batches: Sequence[list[FloatArray]],
    *,
    system: str,
    workload: str,
    setting: int,
    budget_s: float,
    min_calls: int = 2,
    device: str = "cpu",
) -> Point:
    """One untimed call, then calls until `budget_s` has passed (and at least `min_calls`)."""
    call(batches[0])
    synchronise(device)
    latencies, audio, clips = [], 0.0, 0
    cpu_start, start = time.process_time(), time.perf_counter()
    index = 0
    while index < min_calls or time.perf_counter() - start < budget_s:
        batch = batches[index % len(batches)]
        began = time.perf_counter()
        call(batch)
        synchronise(device)
        latencies.append(time.perf_counter() - began)
        audio += sum(clip.size for clip in batch) / RATE
        clips += len(batch)
        index += 1
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    p50, p95, p99 = percentiles_ms(latencies)
    point = Point(system, workload, setting, audio / wall, clips / wall, p50, p95, p99, cpu / audio, os.getloadavg()[0])
    log(describe_point(point))
    return point


def guessed_clips_per_s(workload: Workload, device: str) -> float:
    """What the device serves, to size perf_analyzer's windows where nothing has been measured yet
    (--skip torchscript): about 12 audio-s/s on a 2-core CPU, 2,000 on an H200. The windows only
    need the right order of magnitude, but a CPU guess on a GPU makes them so short that ramp-up
    and drain dominate: throughput then reads low and latency as if lightly loaded."""
    return (2000.0 if device.startswith("cuda") else 12.0) / workload.mean_s


def batches_of(workload: Workload, size: int) -> list[list[FloatArray]]:
    """Consecutive clips in the workload's (shuffled) order, wrapping around, as a batcher would see them."""
    count = len(workload.clips)
    return [[workload.clips[(start + j) % count] for j in range(size)] for start in range(0, count, size)]


# --------------------------------------------------------------------------------------------- workloads


def make_workloads(names: Sequence[str], *, clips_per_length: int, mixed_count: int) -> tuple[list[Workload], str]:
    rng = np.random.default_rng(2024)
    mixed_lengths = np.round(rng.uniform(1.0, 10.0, mixed_count), 1).tolist()
    wanted: dict[str, list[float]] = {}
    for name in names:
        if name == "mixed":
            wanted[name] = mixed_lengths
        else:
            wanted[name] = [float(name.removesuffix("s"))] * clips_per_length
    everything = [seconds for lengths in wanted.values() for seconds in lengths]
    clips, kind = speech_clips(everything, RATE)
    workloads, used = [], 0
    for name, lengths in wanted.items():
        label = "mixed" if name == "mixed" else f"{float(name.removesuffix('s')):g} s"
        workloads.append(Workload(label, tuple(clips[used : used + len(lengths)])))
        used += len(lengths)
    return workloads, kind


# --------------------------------------------------------------------------------------------- systems


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with `count` intra-op threads (None: leave torch's setting alone)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def hf_pipeline(model_ref: str, device: str) -> tuple[Any, str]:
    """The pipeline exactly as the model card builds it; returns it and its attention implementation."""
    from transformers import pipeline

    classifier = pipeline("audio-classification", model=model_ref, device=device)
    return classifier, str(getattr(classifier.model.config, "_attn_implementation", "?"))


def hf_point(classifier: Any, workload: Workload, *, batch_size: int | None, budget_s: float, device: str) -> Point:
    """One clip per call (batch_size None), as the model card calls it, or the pipeline's own batching."""
    if batch_size is None:
        call: Callable[[list[FloatArray]], object] = lambda batch: classifier(batch[0])  # noqa: E731
        system, size = "hf", 1
    else:
        call, system, size = lambda batch: classifier(batch, batch_size=batch_size), "hf_batch", batch_size
    return timed_loop(
        call,
        batches_of(workload, size),
        system=system,
        workload=workload.name,
        setting=size,
        budget_s=budget_s,
        device=device,
    )


class HFProcess:
    """The HF pipeline in a process of its own, by default with malloc as Python leaves it.

    This process keeps freed memory the way the cpu runner does (triton_models/heap.py), so that
    the in-process module is measured as the server runs it. The pipeline is the baseline a user's
    own service would be: built exactly as the model card builds it, in a plain interpreter, so it
    must not inherit that setting (mallopt is per process; a spawned child starts with defaults)."""

    def __init__(self, model_ref: str, device: str, *, keep_freed_mib: int = 0) -> None:
        """`keep_freed_mib` > 0 gives the pipeline the runner's malloc setting instead (--hf-malloc runner),
        to show how much of the difference is the allocator."""
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_hf_child, args=(child, model_ref, device, keep_freed_mib), daemon=True)
        self._process.start()
        child.close()
        self.attention: str = self._receive()

    def _receive(self) -> Any:
        try:
            message = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"the HF pipeline's process died (exit code {self._process.exitcode})") from None
        if isinstance(message, BaseException):
            raise message
        return message

    def point(self, workload: Workload, *, batch_size: int | None, budget_s: float) -> Point:
        self._connection.send((workload, batch_size, budget_s))
        return Point(**self._receive())

    def close(self) -> None:
        if self._process.is_alive():
            self._connection.send(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._connection.close()

    def __enter__(self) -> HFProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _hf_child(connection: Any, model_ref: str, device: str, keep_freed_mib: int) -> None:
    """HFProcess's other end: the pipeline, then one point per request until None. Points go back as
    dicts: this module is `__mp_main__` here, and the parent could not unpickle its classes."""
    try:
        if keep_freed_mib > 0 and not keep_freed_memory(keep_freed_mib * 2**20):
            raise RuntimeError("this C library refused glibc's mallopt")
        classifier, attention = hf_pipeline(model_ref, device)
        connection.send(attention)
        while (request := connection.recv()) is not None:
            workload, batch_size, budget_s = request
            point = hf_point(classifier, workload, batch_size=batch_size, budget_s=budget_s, device=device)
            connection.send(dataclasses.asdict(point))
    except Exception as error:  # every failure goes back to the parent, as a picklable error
        connection.send(RuntimeError(f"HF pipeline: {type(error).__name__}: {error}"))


def hf_points(hf: HFProcess, workload: Workload, *, batch_size: int, budget_s: float) -> list[Point]:
    log(f"HF pipeline on {workload.name}: one clip per call, then batch_size={batch_size}")
    return [hf.point(workload, batch_size=size, budget_s=budget_s) for size in (None, batch_size)]


def inprocess_call(module: torch.jit.ScriptModule, device: str) -> Callable[[list[FloatArray]], object]:
    """The served file in this process, as the ensemble runs it: normalise, concatenate, forward."""

    def run(batch: list[FloatArray]) -> object:
        flat, ends = concatenate([normalise(clip, do_normalize=True) for clip in batch])
        with torch.inference_mode():
            return module(torch.from_numpy(flat).to(device), torch.from_numpy(ends).to(device))

    return run


def torchscript_point(
    module: torch.jit.ScriptModule,
    workload: Workload,
    size: int,
    *,
    threads: int | None,
    budget_s: float,
    device: str,
    system: str = "torchscript",
) -> Point:
    log(f"TorchScript in-process on {workload.name}: batch {size}{', 1 thread' if threads == 1 else ''}")
    with torch_threads(threads):
        return timed_loop(
            inprocess_call(module, device),
            batches_of(workload, size),
            system=system,
            workload=workload.name,
            setting=size,
            budget_s=budget_s,
            device=device,
        )


def torchscript_points(
    module: torch.jit.ScriptModule,
    workload: Workload,
    *,
    batch_sizes: Sequence[int],
    max_batch_audio_s: float,
    budget_s: float,
    device: str,
) -> list[Point]:
    """The batch sweep uses torch's default threads; one more point runs batch 1 on one thread, the
    setting of each served instance, so serving overhead and thread count can be told apart."""
    sweeps: list[tuple[str, int, int | None]] = [("torchscript", size, None) for size in batch_sizes]
    if not device.startswith("cuda"):
        sweeps.append(("torchscript_1t", 1, 1))
    return [
        torchscript_point(module, workload, size, threads=threads, budget_s=budget_s, device=device, system=system)
        for system, size, threads in sweeps
        if size == 1 or size * workload.mean_s <= max_batch_audio_s
    ]


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
    data = write_input_data(scratch / f"{workload.name.replace(' ', '')}.json", [c[None, :] for c in workload.clips])
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


def _request_counts(stdout: str) -> list[str]:
    import re

    return re.findall(r"Client:\s+Request count: (\d+)", stdout)


def _breakdown(row: PerfRow) -> dict[str, float]:
    return {
        "client_send_ms": row.client_send_ms,
        "network_ms": row.network_ms,
        "server_queue_ms": row.server_queue_ms,
        "server_compute_ms": row.server_compute_ms,
        "client_recv_ms": row.client_recv_ms,
    }


def async_client_class() -> Any | None:
    """HOOK: the SDK's async client, where this checkout has it (`emotion_client.AsyncEmotionClient`
    with `classify_many(inputs, concurrency=N)`); None skips the SDK rows with a note."""
    try:
        from emotion_client import AsyncEmotionClient
    except ImportError:
        return None
    return AsyncEmotionClient if hasattr(AsyncEmotionClient, "classify_many") else None


def sdk_point(
    grpc_url: str, workload: Workload, concurrency: int, *, budget_s: float, expected_clips_per_s: float
) -> Point:
    """`classify_many` over the workload repeated to fill the budget.

    Latency per clip is timed around each `classify` call that `classify_many` makes (a subclass
    wraps it), so it includes the client's own audio checks, like an application sees it.
    """
    client_class = async_client_class()
    assert client_class is not None
    repeats = max(1, math.ceil(expected_clips_per_s * budget_s / len(workload.clips)))
    inputs = [clip for _ in range(repeats) for clip in workload.clips]
    if len(inputs) < 2 * concurrency:
        inputs = inputs * math.ceil(2 * concurrency / len(inputs))
    latencies: list[float] = []

    class TimedClient(client_class):  # type: ignore[misc, valid-type]
        async def classify(self, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await super().classify(*args, **kwargs)
            finally:
                latencies.append(time.perf_counter() - began)

    async def measure() -> tuple[float, list[float], float]:
        async with TimedClient(grpc_url, timeout_s=600.0) as client:
            await client.classify_many(list(workload.clips[:concurrency]), RATE, concurrency=concurrency)
            latencies.clear()
            cpu_start = time.process_time()
            start = time.perf_counter()
            items = await client.classify_many(inputs, RATE, concurrency=concurrency)
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
        failed = [item for item in items if not item.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(items)} clips failed, e.g. {failed[0].error}")
        return wall, list(latencies), cpu

    wall, latencies, client_cpu = asyncio.run(measure())
    audio = sum(clip.size for clip in inputs) / RATE
    p50, p95, p99 = percentiles_ms(latencies)
    return Point(
        "sdk",
        workload.name,
        concurrency,
        audio / wall,
        len(inputs) / wall,
        p50,
        p95,
        p99,
        None,
        os.getloadavg()[0],
        detail={"client_cpu_s_per_audio_s": client_cpu / audio},
    )


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


def paired_c1(
    module: torch.jit.ScriptModule,
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


def system_names(system: str | tuple[str, ...]) -> tuple[str, ...]:
    """One system's name, or several to choose from (the HF pipeline's two rows), as a tuple."""
    return (system,) if isinstance(system, str) else system


def contenders(points: Sequence[Point], system: str | tuple[str, ...], workload: str) -> tuple[Point, ...]:
    """The sweep's best setting of `system` and the one beside it (the next larger, else the next
    smaller; for the HF pipeline its other row), both of which the rounds measure again.

    One sweep point can be off by a third on a shared VM, and with only the best measured again a
    setting the sweep misjudged never got its chance (2026-11-26: served 1 s at c=8 measured 6.00
    audio-s/s once, so every round ran c=4). Each system gets two, so that taking the faster of two
    noisy figures favours none of them."""
    systems = system_names(system)
    ranked = sorted(
        (p for p in points if p.system in systems and p.workload == workload),
        key=lambda p: (systems.index(p.system), p.setting),
    )
    if not ranked:
        return ()
    top = max(range(len(ranked)), key=lambda i: ranked[i].audio_s_per_s)
    beside = top + 1 if top + 1 < len(ranked) else top - 1
    return (ranked[top],) if beside < 0 else (ranked[top], ranked[beside])


def fastest_per_round(measured: Sequence[tuple[Point, ...]], system: str | tuple[str, ...]) -> tuple[Point, ...]:
    """Each round's fastest point of `system` among that round's measurements."""
    systems = system_names(system)
    return tuple(max((p for p in row if p.system in systems), key=lambda p: p.audio_s_per_s) for row in measured)


def interleaved_rounds(
    module: torch.jit.ScriptModule,
    grpc_url: str,
    pgid: int | None,
    workload: Workload,
    *,
    inprocess: Sequence[Point],
    served: Sequence[Point],
    hf: Sequence[Point],
    hf_process: HFProcess | None,
    rounds: int,
    budget_s: float,
    device: str,
) -> Interleaved:
    """The sweep's contenders of each system again (`contenders`), all of them in every round: first
    each system's best, then each one's second, so that drift within a round falls on every system."""
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

        systems = [
            [inprocess_at(p.setting) for p in inprocess],
            [served_at(p.setting) for p in served],
            [hf_at(hf_process, row) for row in hf_rows] if hf_process is not None else [],
        ]
        order = [measure for rank in range(2) for each in systems for measure in each[rank : rank + 1]]
        measured = alternate(order, rounds=rounds)
    result = Interleaved(
        inprocess=fastest_per_round(measured, "torchscript"),
        served=fastest_per_round(measured, "served"),
        hf=fastest_per_round(measured, HF_SYSTEMS) if hf_rows else (),
        measured=tuple(point for row in measured for point in row),
    )
    log(
        f"  served/in-process {np.median(result.served_vs_inprocess()):.2f}"
        + (f", served/HF {np.median(result.served_vs_hf()):.2f}" if hf_rows else "")
    )
    return result


# --------------------------------------------------------------------------------------------- served runs


def latency_first_pairs(
    repository: Path,
    scratch: Path,
    loaded: LoadedModel,
    module: torch.jit.ScriptModule,
    workloads: Sequence[Workload],
    budget_s: float,
    min_pairs: int,
) -> list[PairedLatency]:
    """c=1 through a second server on a copy of the repository with the LATENCY_FIRST settings,
    after the first has stopped, paired with in-process batch 1 on torch's default threads: the
    added latency of serving, with the threads held equal."""
    copy = scratch / LATENCY_FIRST_SERVER
    shutil.copytree(repository, copy)
    rewrite_configs(copy, loaded, LATENCY_FIRST)
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


def interleave(
    module: torch.jit.ScriptModule,
    url: str,
    pgid: int | None,
    workload: Workload,
    points: Sequence[Point],
    *,
    pairs: list[PairedLatency],
    rounds: dict[str, Interleaved],
    hf_process: HFProcess | None,
    server: str,
    instances: int,
    threads: int | None,
    args: argparse.Namespace,
    failures: list[str],
) -> None:
    """The workload's comparisons measured alternately (interleaved.py): c=1 pairs, then the best
    setting of each system in rounds."""
    try:
        pairs.append(
            paired_c1(
                module,
                url,
                workload,
                threads=threads,
                server=server,
                instances=instances,
                budget_s=2 * args.point_s,
                min_pairs=args.min_pairs,
                device=args.device,
            )
        )
    except InferenceServerException as error:
        failures.append(f"c=1 pairs on {workload.name} failed: {error}")
        log(failures[-1])
    ts, srv = contenders(points, "torchscript", workload.name), contenders(points, "served", workload.name)
    if not ts or not srv or args.rounds == 0:
        return
    hf = contenders(points, HF_SYSTEMS, workload.name)
    try:
        rounds[workload.name] = interleaved_rounds(
            module,
            url,
            pgid,
            workload,
            inprocess=ts,
            served=srv,
            hf=hf,
            hf_process=hf_process,
            rounds=args.rounds,
            budget_s=args.point_s,
            device=args.device,
        )
    except RuntimeError as error:
        failures.append(f"interleaved rounds on {workload.name} failed: {error}")
        log(failures[-1])


def describe_point(point: Point) -> str:
    return (
        f"  {SYSTEM_NAMES[point.system]} {point.workload} @ {point.setting}: {point.audio_s_per_s:.2f} audio-s/s, "
        f"p50 {point.p50_ms:.0f} ms, p99 {point.p99_ms:.0f} ms (load {point.load:.1f})"
    )


def rewrite_configs(repository: Path, loaded: LoadedModel, batching: BatchingSettings) -> None:
    """Point an exported cpu repository at other batching settings without tracing again."""
    description = describe(loaded, batching=batching, min_duration_s=0.1, max_duration_s=30.0)
    for name, config in all_configs(description, "cpu").items():
        (repository / name / "config.pbtxt").write_text(render(config))


def _candidate(
    batch: int,
    delay_us: int,
    instances: int,
    threads: int,
    *,
    preferred: int = 4,
    preprocess: int = 2,
    padding: float = 0.1,
    warmup: int = 2,
) -> BatchingSettings:
    return dataclasses.replace(
        BatchingSettings(),
        max_batch_size=batch,
        preferred_batch_size=preferred,
        max_queue_delay_us=delay_us,
        classifier_instances=instances,
        intra_op_threads=threads,
        preprocess_instances=preprocess,
        max_padding_fraction=padding,
        warmup_count=warmup,
    )


TUNE_CANDIDATES: tuple[BatchingSettings, ...] = (
    _candidate(32, 2000, 1, 0, preferred=0, padding=math.inf),  # the settings before any tuning
    _candidate(8, 0, 1, 2),
    _candidate(8, 0, 2, 1),
    _candidate(8, 0, 2, 1, preferred=0),  # the settings before the preferred cut
    _candidate(4, 0, 2, 1),
    _candidate(8, 2000, 2, 1),
    _candidate(8, 0, 2, 1, padding=math.inf),
    _candidate(8, 0, 2, 1, preprocess=1),
    _candidate(8, 0, 2, 2),
    _candidate(8, 0, 2, 1, warmup=0),
)
"""Complete settings, so a row means the same whatever the defaults are; the first row is the
repository's settings before any tuning (whole batches: no length groups)."""


@dataclasses.dataclass(frozen=True)
class TuneResult:
    settings: BatchingSettings
    points: list[Point]
    first: list[tuple[str, float]]
    failures: list[str]


def tune(
    repository: Path,
    loaded: LoadedModel,
    workloads: Sequence[Workload],
    *,
    concurrencies: Sequence[int],
    budget_s: float,
    expected: dict[str, float],
    only: Sequence[int] | None,
    after_each: Callable[[list[TuneResult]], None],
) -> list[TuneResult]:
    results: list[TuneResult] = []
    for index, settings in enumerate(TUNE_CANDIDATES):
        if only is not None and index not in only:
            continue
        log(f"tuning candidate {index}: {settings}")
        rewrite_configs(repository, loaded, settings)
        failures: list[str] = []
        with served(repository, None) as (url, pgid, _):
            first = first_requests(url, workloads)
            points = served_points(
                url,
                pgid,
                workloads,
                concurrencies=concurrencies,
                budget_s=budget_s,
                expected=expected,
                with_sdk=False,
                failures=failures,
            )
        results.append(TuneResult(settings, points, first, failures))
        after_each(results)
    rewrite_configs(repository, loaded, BatchingSettings())
    return results


# --------------------------------------------------------------------------------------------- report


def gpu_target_notes(points: Sequence[Point], workloads: Sequence[str]) -> list[str]:
    """The issue's H100 target per workload: the best served point whose p99 stays within the limit."""
    notes = []
    for workload in workloads:
        within = [
            p for p in points if p.system == "served" and p.workload == workload and p.p99_ms <= GPU_TARGET["p99_ms"]
        ]
        if not within:
            notes.append(f"GPU target, {workload}: no served point kept p99 ≤ {GPU_TARGET['p99_ms']:g} ms.")
            continue
        top = max(within, key=lambda p: p.audio_s_per_s)
        notes.append(
            f"GPU target (≥ {GPU_TARGET['audio_s_per_s']:,.0f} audio-s/s served at p99 ≤ {GPU_TARGET['p99_ms']:g} ms), "
            f"{workload}: {top.audio_s_per_s:,.0f} audio-s/s at c={top.setting}, p99 {top.p99_ms:.0f} ms: "
            + verdict(top.audio_s_per_s >= GPU_TARGET["audio_s_per_s"])
        )
    return notes


def best(points: Sequence[Point], system: str | tuple[str, ...], workload: str) -> Point | None:
    """The fastest point of `workload` among those of `system` (one name, or several to choose from)."""
    found = contenders(points, system, workload)
    return found[0] if found else None


def at(points: Sequence[Point], system: str, workload: str, setting: int) -> Point | None:
    return next((p for p in points if (p.system, p.workload, p.setting) == (system, workload, setting)), None)


def latency_first_last(server: str) -> bool:
    """Sort key: the default server's c=1 pairs first, the latency-first server's after them."""
    return server == LATENCY_FIRST_SERVER


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def summary_rows(
    points: Sequence[Point],
    workloads: Sequence[str],
    pairs: Sequence[PairedLatency],
    rounds: dict[str, Interleaved],
) -> list[dict[str, Any]]:
    rows = []
    for name in workloads:
        hf_best = best(points, HF_SYSTEMS, name)
        ts = best(points, "torchscript", name)
        srv = best(points, "served", name)
        mine = {pair.server: pair for pair in pairs if pair.workload == name}
        rows.append(
            {
                "workload": name,
                "hf": best(points, "hf", name),
                "hf_batch": best(points, "hf_batch", name),
                "torchscript": ts,
                "served": srv,
                "sdk": best(points, "sdk", name),
                "rounds": name in rounds,
                "served_vs_inprocess": rounds[name].served_vs_inprocess()
                if name in rounds
                else (srv.audio_s_per_s / ts.audio_s_per_s,)
                if srv and ts
                else (),
                "served_vs_hf": rounds[name].served_vs_hf()
                if name in rounds
                else (srv.audio_s_per_s / hf_best.audio_s_per_s,)
                if srv and hf_best
                else (),
                "paired": [mine[server] for server in sorted(mine, key=latency_first_last)],
            }
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
    outcome = pair.verdict(TARGETS["added_latency_ms"])
    return (
        f"{pair.added_p50_ms:+.1f} ms {'**not met**' if outcome == 'not met' else outcome} "
        f"[{pair.added_q25_ms:+.0f}, {pair.added_q75_ms:+.0f}]; outside the model {pair.outside_model_p50_ms:.1f} ms"
    )


def markdown(
    points: Sequence[Point],
    workloads: Sequence[str],
    context: dict[str, Any],
    first: Sequence[tuple[str, float]],
    notes: Sequence[str],
    pairs: Sequence[PairedLatency] = (),
    rounds: dict[str, Interleaved] | None = None,
) -> str:
    rounds = rounds or {}
    rows = summary_rows(points, workloads, pairs, rounds)
    servers = sorted({pair.server for pair in pairs}, key=latency_first_last)
    lines = [
        f"Measured {context['date']} on {context['machine']}; {context['model']}; clips: {context['clips']}; "
        f"HF pipeline: {context['hf_attention']} attention, batch_size={context['hf_batch_size']}, "
        f"{context.get('hf_process', 'in the bench process')}; in-process TorchScript: "
        f"{context.get('inprocess_memory', 'malloc defaults')}; "
        f"served: {context['served']}. Load average (1 min) over the points: {context['load']}.",
        "",
        "Throughput in audio-seconds per second (the batch size B or concurrency c it was best at in the sweep). "
        f"Targets: served ≥ {TARGETS['served_vs_inprocess']}x in-process, ≥ {TARGETS['served_vs_hf']}x the "
        f"better HF row, latency added at c=1 ≤ {TARGETS['added_latency_ms']:g} ms over in-process batch 1. "
        "Served / in-process and served / HF are medians over rounds that measure each system's best setting "
        "from the sweep and the one beside it again in turn, taking each round's faster of the two (in brackets "
        "their range; '(sweep)': the sweep's ratio, without rounds). "
        "Added at c=1 is the median over pairs of one clip in-process then the same clip "
        "served, alternately, with the same threads on both sides, [its interquartile range]: met when the median "
        "is within the target, not met when the lower quartile is above it, within noise otherwise; then the "
        "median time of a served request outside the classifier's compute (gRPC, ensemble, preprocess, IPC: "
        "Triton's statistics per request), which the noise of the model's own time does not blur.",
        "",
        "| workload | HF, 1 clip/call | HF, batch_size | in-process TorchScript | served, perf_analyzer | served, SDK "
        "| served / in-process | served / HF | "
        + " | ".join(f"added at c=1, {server} server" for server in servers)
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(servers),
    ]
    for row in rows:
        by_server = {pair.server: pair for pair in row["paired"]}
        lines.append(
            f"| {row['workload']} | {_cell(row['hf'], 'B=')} | {_cell(row['hf_batch'], 'B=')} "
            f"| {_cell(row['torchscript'], 'B=')} | {_cell(row['served'], 'c=')} | {_cell(row['sdk'], 'c=')} "
            f"| {_ratio_cell(row['served_vs_inprocess'], TARGETS['served_vs_inprocess'], rounds=row['rounds'])} "
            f"| {_ratio_cell(row['served_vs_hf'], TARGETS['served_vs_hf'], rounds=row['rounds'])} "
            + "".join(f"| {_added_cell(by_server.get(server))} " for server in servers)
            + "|"
        )
    if rounds:
        lines += [
            "",
            "The rounds (audio-s/s; each round measures in-process, served and HF in turn at the sweep's best "
            "setting of each, then at the setting beside it; the faster of each system's two is shown):",
            "",
            "| workload | round | HF pipeline | in-process | served | served / in-process | served / HF |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, measured in rounds.items():
            vs_hf = measured.served_vs_hf() or (None,) * len(measured.served)
            for index, (ts, srv, ratio, ratio_hf) in enumerate(
                zip(measured.inprocess, measured.served, measured.served_vs_inprocess(), vs_hf, strict=True), 1
            ):
                hf = measured.hf[index - 1] if measured.hf else None
                lines.append(
                    f"| {name} | {index} | {_cell(hf, 'B=')} | {_cell(ts, 'B=')} | {_cell(srv, 'c=')} "
                    f"| {ratio:.2f} | {f'{ratio_hf:.2f}' if ratio_hf is not None else '-'} |"
                )
    if pairs:
        lines += [
            "",
            "c=1, served and in-process alternately on the same clips (ms; classifier compute: Triton's statistics "
            "for each served request):",
            "",
            "| workload | server | in-process | pairs | in-process p50 | served p50 | classifier compute p50 "
            "| added: median (IQR) | outside the model p50 | load |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for pair in sorted(pairs, key=lambda p: (latency_first_last(p.server), list(workloads).index(p.workload))):
            lines.append(
                f"| {pair.workload} | {pair.server} | {pair.inprocess} | {pair.pairs} | {pair.inprocess_p50_ms:.1f} "
                f"| {pair.served_p50_ms:.1f} | {pair.compute_p50_ms:.1f} | {pair.added_p50_ms:+.1f} "
                f"({pair.added_q25_ms:+.1f} to {pair.added_q75_ms:+.1f}) | {pair.outside_model_p50_ms:.1f} "
                f"| {pair.load:.1f} |"
            )
    lines += [
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
    served_points_ = [p for p in points if p.system == "served" and p.detail]
    if served_points_:
        lines += [
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
        for p in served_points_:
            d = p.detail
            lines.append(
                f"| {p.workload} | {p.setting} | {d['client_send_ms']:.2f} | {d['network_ms']:.2f} "
                f"| {d['server_queue_ms']:.2f} | {d['server_compute_ms']:.1f} | {d['client_recv_ms']:.2f} |"
            )
    if first:
        lines += ["", "First requests after the server reported ready (warmup ran at load):", ""]
        lines += ["| request | latency ms |", "|---|---:|"]
        lines += [f"| {label} | {ms:.1f} |" for label, ms in first]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    lines += ["", f"Command: `{context['command']}`; wall time {context['wall_min']:.1f} min."]
    return "\n".join(lines)


def tune_markdown(results: Sequence[TuneResult], workloads: Sequence[str], context: dict[str, Any]) -> str:
    concurrencies = sorted({p.setting for result in results for p in result.points})
    knobs = "| max batch | cut at | queue delay µs | instances x threads | preprocess | length groups | warmup |"
    header = knobs + " ".join(f" {w} c={c} |" for w in workloads for c in concurrencies) + " first request ms |"
    lines = [
        f"Measured {context['date']} on {context['machine']}; {context['model']}; one server per row, "
        "perf_analyzer over gRPC. Cells: audio-seconds per second (p50 / p99 latency in ms). Cut at: the "
        "preferred batch size the batcher cuts a longer queue at (-: none). Threads 0: torch's default "
        "(one per core).",
        "",
        header,
        "|---:|---:|---:|---|---:|---|---:|" + "---:|" * (len(workloads) * len(concurrencies) + 1),
    ]
    notes = []
    for row, result in enumerate(results, start=1):
        b = result.settings
        groups = "whole batch" if math.isinf(b.max_padding_fraction) else f"≤ {b.max_padding_fraction:g} padding"
        cells = []
        for workload in workloads:
            for concurrency in concurrencies:
                point = at(result.points, "served", workload, concurrency)
                cells.append(
                    f"{point.audio_s_per_s:.2f} ({point.p50_ms:.0f} / {point.p99_ms:.0f})" if point else "failed"
                )
        lines.append(
            f"| {b.max_batch_size} | {b.cut or '-'} | {b.max_queue_delay_us} "
            f"| {b.classifier_instances} x {b.intra_op_threads} | {b.preprocess_instances} | {groups} "
            f"| {b.warmup_count} | " + " | ".join(cells) + f" | {result.first[0][1]:.0f} |"
        )
        notes += [
            # Several rows share max batch and instances (the cut, the delay, ...): the row number tells them apart.
            f"row {row}, max batch {b.max_batch_size}, {b.classifier_instances} x {b.intra_op_threads}: {f}"
            for f in result.failures
        ]
    loads = [p.load for result in results for p in result.points] or [0.0]
    lines += ["", f"Load average (1 min) over the points: {min(loads):.1f}-{max(loads):.1f}."]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines)


def write_section(path: Path, key: str, body: str) -> None:
    begin, end = MARKERS[key]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def plot(points: Sequence[Point], workloads: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for workload, colour in zip(workloads, colours, strict=False):
        served_ = sorted(
            (p for p in points if p.system == "served" and p.workload == workload), key=lambda p: p.setting
        )
        if not served_:
            continue
        xs = [p.setting for p in served_]
        left.plot(xs, [p.audio_s_per_s for p in served_], "o-", color=colour, label=f"{workload} served")
        right.plot(xs, [p.p99_ms for p in served_], "o-", color=colour, label=f"{workload} served")
        ts = best(points, "torchscript", workload)
        if ts:
            left.axhline(ts.audio_s_per_s, color=colour, linestyle="--", linewidth=1)
        hf = best(points, "hf", workload)
        if hf:
            left.axhline(hf.audio_s_per_s, color=colour, linestyle=":", linewidth=1)
        sdk = best(points, "sdk", workload)
        if sdk:
            left.plot([sdk.setting], [sdk.audio_s_per_s], "s", color=colour, markerfacecolor="none")
            right.plot([sdk.setting], [sdk.p99_ms], "s", color=colour, markerfacecolor="none")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (requests in flight)")
        axis.grid(True, alpha=0.3)
    left.set_ylabel("audio-seconds per second")
    left.set_title("throughput (dashed: in-process best batch, dotted: HF pipeline, □: SDK)", fontsize=9)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    right.set_title("p99 latency (perf_analyzer; □: SDK classify_many)", fontsize=9)
    left.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------------- main


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or directory (default: random-init wav2vec2-base)")
    parser.add_argument("--random-init", choices=("tiny", "base"), default="base", help="without --model")
    parser.add_argument(
        "--quick", action="store_true", help="short windows and fewer points (about 14 min on 2 CPU cores)"
    )
    parser.add_argument("--tune", action="store_true", help="only sweep dynamic-batching settings (a server each)")
    parser.add_argument("--tune-only", type=int, nargs="+", help="indices of the tuning candidates to run")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda: where HF, the in-process module and the served classifier run"
    )
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16"),
        help="weights of the exported model.pt (default: fp16 on cuda, fp32 on cpu, where fp16 is slower)",
    )
    parser.add_argument("--repository", type=Path, help="an exported repository to use instead of exporting one")
    parser.add_argument(
        "--server-url", help="benchmark this running server (e.g. the GPU container) instead of starting one"
    )
    parser.add_argument(
        "--workloads", nargs="+", default=["1s", "4s", "10s", "mixed"], choices=["1s", "4s", "10s", "mixed"]
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="served concurrency sweep (default 1 2 4 8; cuda 1 8 32 128)"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", help="in-process batch sizes (default 1 2 4 8; cuda 1 8 32 64)"
    )
    parser.add_argument(
        "--max-batch-audio-s", type=float, help="skip in-process batches holding more audio (default 40; cuda 700)"
    )
    parser.add_argument("--hf-batch-size", type=int, help="the HF pipeline's batch_size (default 4; cuda 16)")
    parser.add_argument(
        "--hf-malloc",
        choices=("defaults", "runner"),
        default="defaults",
        help="malloc of the HF pipeline's process: glibc's defaults, as the model card's users run it, or the "
        "cpu runner's setting that keeps freed memory (to see how much of a difference is the allocator)",
    )
    parser.add_argument("--point-s", type=float, help="seconds measured per point (default 6, quick 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of each system's best setting and the one beside it, measured in turn, for the ratios "
        "(default 3, quick 1; 0: none)",
    )
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=["hf", "torchscript", "served", "sdk", "latency-first"]
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, help="default docs/benchmarks.png (cuda: docs/benchmarks-gpu.png)")
    parser.add_argument("--json", type=Path, help="also write every point as JSON here")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="SAVED_JSON",
        help="measure nothing: make the tables of a run saved with --json again, into --output "
        "(and the plot, where --plot is given)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return args
    cuda = args.device.startswith("cuda")
    if cuda:
        args.concurrency = args.concurrency or ([1, 32] if args.quick else [1, 8, 32, 128])
        args.batch_sizes = args.batch_sizes or ([1, 32] if args.quick else [1, 8, 32, 64])
    args.concurrency = args.concurrency or ([1, 4] if args.quick else [1, 2, 4, 8])
    args.batch_sizes = args.batch_sizes or ([1, 4] if args.quick else [1, 2, 4, 8])
    args.max_batch_audio_s = args.max_batch_audio_s or (700.0 if cuda else 40.0)
    args.hf_batch_size = args.hf_batch_size or (16 if cuda else 4)
    args.dtype = args.dtype or ("fp16" if cuda else "fp32")
    args.plot = args.plot or REPO_ROOT / "docs" / ("benchmarks-gpu.png" if cuda else "benchmarks.png")
    args.point_s = args.point_s or (2.0 if args.quick else 6.0)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 0:
        parser.error("--rounds must be 0 or more")
    args.min_pairs = 4 if args.quick else MIN_PAIRS  # fewest c=1 pairs per workload (10 s clips: ~5 s a pair)
    return args


def render_saved(saved: Path, output: Path, plot_path: Path | None) -> str:
    """The tables (and, where asked, the plot) of a run saved with --json, made again without measuring."""
    run = json.loads(saved.read_text())
    points = [Point(**p) for p in run["points"]]
    pairs = [PairedLatency(**p) for p in run["c1_pairs"]]
    rounds = {
        name: Interleaved(**{field: tuple(Point(**p) for p in row) for field, row in measured.items()})
        for name, measured in run["rounds"].items()
    }
    names = [w["name"] for w in run["workloads"]]
    context = run["context"]
    first = [(label, ms) for label, ms in run["first_requests"]]
    body = markdown(points, names, context, first, run["notes"], pairs, rounds)
    write_section(output, run["section"], body)
    if plot_path is not None:
        plot(points, names, plot_path, f"{context['machine']} — {context['model']}")
    return body


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        print(render_saved(args.render, args.output, args.plot))
        return 0
    started = time.perf_counter()
    device = args.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.dtype == "fp16" and not cuda:
        print("error: --dtype fp16 is for --device cuda (on a CPU half precision is slower)", file=sys.stderr)
        return 2
    # The pip tritonserver has no libtorch backend: on a GPU it serves the Python-backend runner on KIND_GPU.
    target: Target = "gpu-python" if cuda else "cpu"
    settings = BatchingSettings.for_target(target)
    # The in-process module runs with malloc as the cpu runner sets it up; the HF pipeline gets a
    # process of its own with the defaults (HFProcess).
    kept_mib = settings.keep_freed_memory_mb if keep_freed_memory(settings.keep_freed_memory_mb * 2**20) else 0
    loaded = load_pretrained(args.model) if args.model else random_model(args.random_init)
    workloads, kind = make_workloads(args.workloads, clips_per_length=4 if args.quick else 8, mixed_count=16)
    log(f"model {loaded.source}; clips: {kind}; workloads: {', '.join(w.name for w in workloads)}")
    notes: list[str] = []
    points: list[Point] = []
    first: list[tuple[str, float]] = []
    pairs: list[PairedLatency] = []
    rounds: dict[str, Interleaved] = {}

    with tempfile.TemporaryDirectory(prefix="emotion-bench-") as scratch:
        repository = args.repository
        if repository is None:
            repository = Path(scratch) / "model_repository"
            log(f"exporting a {target} repository, {args.dtype} (trace + parity check)")
            description = describe(loaded, batching=settings, min_duration_s=0.1, max_duration_s=30.0)
            export(loaded, repository, target, description, progress=log, dtype=args.dtype)
        provenance = Provenance.from_json((repository / "classifier" / "1" / "export.json").read_text())
        model_ref = args.model or str(Path(scratch) / "hf-model")
        if not args.model:
            loaded.model.save_pretrained(model_ref)
            loaded.feature_extractor.save_pretrained(model_ref)

        if args.tune:
            if args.repository is not None:  # tuning rewrites configs: never those of the caller's repository
                repository = Path(scratch) / "model_repository"
                shutil.copytree(args.repository, repository)
            expected = {w.name: guessed_clips_per_s(w, device) for w in workloads}
            context: dict[str, Any] = {
                "date": datetime.date.today().isoformat(),
                "machine": machine_name(device),
                "model": provenance.source_model,
            }

            def write(results: list[TuneResult]) -> None:
                write_section(args.output, "tune", tune_markdown(results, [w.name for w in workloads], context))

            results = tune(
                repository,
                loaded,
                workloads,
                concurrencies=args.concurrency,
                budget_s=args.point_s,
                expected=expected,
                only=args.tune_only,
                after_each=write,
            )
            print(tune_markdown(results, [w.name for w in workloads], context))
            return 0

        # The in-process side of the c=1 pairs runs on the threads of one served instance.
        server_threads = (settings.intra_op_threads or None) if not cuda and args.server_url is None else None
        server_label = (
            "running"
            if args.server_url
            else f"{settings.classifier_instances} x {server_threads} thread"
            if server_threads
            else "default"
        )
        with contextlib.ExitStack() as stack:
            url, pgid, ready_s = None, None, None
            if "served" not in args.skip:
                log("starting the server" if args.server_url is None else f"using the server at {args.server_url}")
                try:
                    url, pgid, ready_s = stack.enter_context(served(repository, args.server_url))
                except ServerError as error:  # the other systems are still worth measuring
                    notes.append(f"Served rows skipped: the server did not start: {error}")
                    log(notes[-1])
                if url is not None and pgid is not None:
                    first = [("server start to ready (load + warmup)", (ready_s or 0.0) * 1000.0)]
                    first += first_requests(url, workloads)
            with_sdk = url is not None and "sdk" not in args.skip and async_client_class() is not None
            if url is not None and "sdk" not in args.skip and not with_sdk:
                notes.append(
                    "SDK rows skipped: this checkout's emotion_client has no AsyncEmotionClient.classify_many."
                )
            hf_process = (
                stack.enter_context(
                    HFProcess(model_ref, device, keep_freed_mib=kept_mib if args.hf_malloc == "runner" else 0)
                )
                if "hf" not in args.skip
                else None
            )
            hf_attention = hf_process.attention if hf_process is not None else "-"
            module = None
            if "torchscript" not in args.skip:
                module = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(repository / "classifier" / "1" / "model.pt"), map_location=device
                ).eval()
            # Workload by workload, every system close in time: other load on the machine then
            # skews the systems of one workload alike.
            for workload in workloads:
                if hf_process is not None:
                    points += hf_points(hf_process, workload, batch_size=args.hf_batch_size, budget_s=args.point_s)
                if module is not None:
                    points += torchscript_points(
                        module,
                        workload,
                        batch_sizes=args.batch_sizes,
                        max_batch_audio_s=args.max_batch_audio_s,
                        budget_s=args.point_s,
                        device=device,
                    )
                if url is not None:
                    reference = best(points, "torchscript", workload.name)
                    points += served_points(
                        url,
                        pgid,
                        [workload],
                        concurrencies=args.concurrency,
                        budget_s=args.point_s,
                        expected={
                            workload.name: reference.clips_per_s if reference else guessed_clips_per_s(workload, device)
                        },
                        with_sdk=with_sdk,
                        failures=notes,
                    )
                if url is not None and module is not None:
                    interleave(
                        module,
                        url,
                        pgid,
                        workload,
                        points,
                        pairs=pairs,
                        rounds=rounds,
                        hf_process=hf_process,
                        server=server_label,
                        instances=settings.classifier_instances,
                        threads=server_threads,
                        args=args,
                        failures=notes,
                    )
        if module is not None and pgid is not None and not cuda and "latency-first" not in args.skip:
            try:
                pairs += latency_first_pairs(
                    repository, Path(scratch), loaded, module, workloads, 2 * args.point_s, args.min_pairs
                )
            except (ServerError, InferenceServerException) as error:
                notes.append(f"latency-first server: {error}")
                log(notes[-1])
        runner = "the Python-backend runner on KIND_GPU" if cuda else "the Python-backend runner"
        grouping = (
            "whole batches"
            if math.isinf(settings.max_padding_fraction)
            else f"length groups ≤ {settings.max_padding_fraction:g} padding"
        )
        threads = "" if cuda else f" x {settings.intra_op_threads or 'default'} thread(s)"
        served_label = (
            "skipped"
            if "served" in args.skip
            else f"a running server at {args.server_url}"
            if args.server_url
            else f"pip tritonserver {find_tritonserver().version}, {target} target ({runner}), {provenance.dtype}, "
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
        if cuda:
            notes += gpu_target_notes(points, [w.name for w in workloads])

    loads = [p.load for p in points] or [os.getloadavg()[0]]
    context = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_name(device),
        "model": f"{provenance.source_model}{' (untrained)' if provenance.untrained else ''}",
        "clips": f"{kind}, {len(workloads[0].clips)} per fixed length, mixed {len(workloads[-1].clips)} of 1-10 s",
        "hf_attention": hf_attention,
        "hf_batch_size": args.hf_batch_size,
        "hf_process": "in its own process with malloc's defaults, as a user's service runs it"
        if args.hf_malloc == "defaults"
        else f"in its own process keeping ≤ {kept_mib} MiB freed memory like the runner (--hf-malloc runner)",
        "inprocess_memory": f"keeps ≤ {kept_mib} MiB freed memory, as the served runner does"
        if kept_mib
        else "malloc defaults, as the served runner",
        "served": served_label,
        "load": f"{min(loads):.1f}-{max(loads):.1f}",
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_min": (time.perf_counter() - started) / 60.0,
    }
    names = [w.name for w in workloads]
    section = "throughput-gpu" if cuda else "throughput"
    body = markdown(points, names, context, first, notes, pairs, rounds)
    write_section(args.output, section, body)
    plot(points, names, args.plot, f"{context['machine']} — {context['model']}")
    if args.json:
        measured = {
            "points": [dataclasses.asdict(p) for p in points],
            "c1_pairs": [dataclasses.asdict(p) for p in pairs],
            "rounds": {name: dataclasses.asdict(r) for name, r in rounds.items()},
            # Everything else the tables and the plot are made of, so that `--render` can make them again.
            "section": section,
            "context": context,
            "workloads": [{"name": w.name, "clips": len(w.clips)} for w in workloads],
            "first_requests": [[label, ms] for label, ms in first],
            "notes": notes,
        }
        args.json.write_text(json.dumps(measured, indent=1))
    print(body)
    log(f"wrote {args.output} and {args.plot} in {context['wall_min']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
