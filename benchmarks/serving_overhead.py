"""What the served path costs per request without the model: the CPU a GPU server needs beside its GPU.

On a GPU the classifier takes milliseconds per batch, and what the CPU does for every request
(gRPC, the ensemble, the preprocess stub, the shared-memory hops, the Python runner) decides
whether the server can keep it fed: 10,000 audio-seconds per second is 10,000 requests per second
of 1 s clips. This serves the real ensemble and preprocess model with the classifier's `model.pt`
replaced by one that returns constant outputs of the right shapes, loads it with perf_analyzer and
reports requests per second and the CPU time per request of each process. Both classifier runtimes
are measured: the Python-backend runner (cpu and gpu-python targets) and Triton's libtorch backend
(the gpu target, production), built by `make libtorch-backend` and run here on KIND_CPU; the
libtorch classifier runs inside the server process, so its share is in the server's column. The
batching settings are the GPU targets' (batches up to 32, 2 ms delay), with one classifier
instance and with two: with batches this short, one instance let Triton's dynamic batcher leave
requests queued for its 500 ms idle wait now and then, which is why the GPU targets now run two.
Those stalls hit a fraction of a percent of requests, below perf_analyzer's p99, so a second probe
counts them: synchronous clients in threads, as a service calls the server, and every request
over 400 ms.

    python benchmarks/serving_overhead.py                   # 1 s, 4 s, 10 s clips at c=8 and 32, about 14 min
    python benchmarks/serving_overhead.py --runtimes libtorch --instances 2 --stall-rounds 0

The table goes between the `overhead` markers of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient
from speed.accounting import group_processes
from speed.context import machine_name
from speed.perf_analyzer import perf_analyzer_point
from speed.progress import log
from speed.sections import REPO_ROOT, write_section
from speed.workloads import Workload, make_workloads

from emotion_build.export.pipeline import describe, export
from emotion_build.model.loading import random_model
from emotion_build.repository.description import AUDIO_INPUT, ENSEMBLE_MODEL, BatchingSettings, Target
from emotion_build.server.install import TritonInstall, find_tritonserver
from emotion_build.server.launcher import TritonServer
from emotion_build.server.libtorch_backend import check_backend, default_backends_dir

ROLES = ("server", "preprocess", "classifier runner", "perf_analyzer")
RUNTIMES: dict[str, Target] = {"python": "cpu", "libtorch": "gpu"}
"""Each classifier runtime and the target whose repository serves it (the gpu one on KIND_CPU here)."""


class ConstantClassifier(torch.nn.Module):
    """The exported module's interface with no model behind it: only the serving path is left."""

    def __init__(self, classes: int, embedding_size: int) -> None:
        super().__init__()
        self.classes = classes
        self.embedding_size = embedding_size

    def forward(
        self,
        waveform: torch.Tensor,
        waveform_ends: torch.Tensor,
        waveform_items: torch.Tensor = torch.tensor(0, dtype=torch.int32),  # noqa: B008 (as the served module's)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = (waveform_items if waveform_items.dim() > 0 else waveform_ends).reshape(-1).shape[0]
        logits = torch.zeros(rows, self.classes, device=waveform.device)
        return logits, torch.softmax(logits, dim=-1), torch.zeros(rows, self.embedding_size, device=waveform.device)


@dataclasses.dataclass(frozen=True)
class OverheadPoint:
    runtime: str
    instances: int
    workload: str
    concurrency: int
    requests_per_s: float
    audio_s_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: dict[str, float]
    load: float

    @property
    def server_ms_per_request(self) -> float:
        """Everything the server's processes spend on a request (perf_analyzer is the client's)."""
        return sum(ms for role, ms in self.cpu_ms_per_request.items() if role != "perf_analyzer")


def role_of(command: str) -> str | None:
    if "triton_python_backend_stub" in command:
        if "/stream/" in command:  # the live-audio model, idle here: its sweeper is the server's fixed cost
            return "server"
        return "preprocess" if "/preprocess/" in command else "classifier runner"
    return "server" if "tritonserver" in command else None


def cpu_by_role(pgid: int) -> dict[str, float]:
    """CPU seconds so far of the server's processes, by what each one does; plus reaped children."""
    seconds = dict.fromkeys(ROLES, 0.0)
    for command, cpu_s in group_processes(pgid):
        role = role_of(command)
        if role is not None:
            seconds[role] += cpu_s
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # perf_analyzer, once it has exited
    seconds["perf_analyzer"] = usage.ru_utime + usage.ru_stime
    return seconds


def constant_repository(directory: Path, batching: BatchingSettings, runtime: str = "python") -> Path:
    """The export of a tiny model for `runtime`, its classifier's model.pt swapped for the constant module."""
    loaded = random_model("tiny")
    target = RUNTIMES[runtime]
    if target != "cpu":
        batching = dataclasses.replace(batching, classifier_on_cpu=True)
    description = describe(loaded, batching=batching, min_duration_s=0.1, max_duration_s=30.0)
    export(loaded, directory, target, description, progress=log, dtype="fp32", engine="torchscript")
    module = torch.jit.script(ConstantClassifier(len(description.labels), description.embedding_size))
    module.save(str(directory / "classifier" / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    return directory


def install_for(runtime: str) -> TritonInstall | None:
    """The pip tritonserver, with the libtorch backend beside its Python one for that runtime."""
    if runtime == "python":
        return None
    check_backend(default_backends_dir())
    return find_tritonserver(extra_backends=default_backends_dir())


@dataclasses.dataclass(frozen=True)
class StallProbe:
    runtime: str
    instances: int
    number: int
    """Which round of the probe (instance counts alternate round by round)."""
    requests: int
    p99_ms: float
    max_ms: float
    stalled: int
    """Requests that took over STALL_MS: a batcher that slept through their arrival."""


STALL_MS = 400.0
STALL_CLIENTS = 8


def stall_probe(
    url: str, workload: Workload, *, clients: int, duration_s: float, runtime: str, instances: int, number: int
) -> StallProbe:
    """`clients` threads, each sending one clip at a time for `duration_s`, every latency kept."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration_s

    def client(offset: int) -> None:
        index = offset
        with grpcclient.InferenceServerClient(url) as connection:
            while time.perf_counter() < deadline:
                audio = workload.clips[index % len(workload.clips)][None, :]
                index += 1
                request = grpcclient.InferInput(AUDIO_INPUT, list(audio.shape), "FP32")
                request.set_data_from_numpy(audio)
                start = time.perf_counter()
                connection.infer(ENSEMBLE_MODEL, [request])
                with lock:
                    latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ms = np.asarray(latencies) * 1000.0
    return StallProbe(
        runtime, instances, number, ms.size, float(np.percentile(ms, 99)), float(ms.max()), int((ms > STALL_MS).sum())
    )


def served_requests(client: grpcclient.InferenceServerClient, model: str) -> int:
    """Requests the model has answered since the server started (Triton's statistics)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def measure(
    server: TritonServer,
    runtime: str,
    instances: int,
    workload: Workload,
    concurrency: int,
    *,
    point_s: float,
    scratch: Path,
) -> OverheadPoint:
    pid = server.pid
    if pid is None:
        raise RuntimeError("measure() needs a started server: its processes' CPU time is what it reads")
    with grpcclient.InferenceServerClient(server.endpoints.grpc_url) as client:
        cpu_before, served_before = cpu_by_role(pid), served_requests(client, ENSEMBLE_MODEL)
        point = perf_analyzer_point(
            server.endpoints.grpc_url,
            workload,
            concurrency,
            scratch=scratch,
            expected_clips_per_s=1000.0,
            budget_s=point_s,
            server_pgid=None,
        )
        cpu_after, served_after = cpu_by_role(pid), served_requests(client, ENSEMBLE_MODEL)
    # The CPU of the whole perf_analyzer run (windows, ramp-up, drain) over every request it sent.
    requests = max(served_after - served_before, 1)
    per_request = {role: (cpu_after[role] - cpu_before[role]) * 1000.0 / requests for role in ROLES}
    return OverheadPoint(
        runtime,
        instances,
        workload.name,
        concurrency,
        point.clips_per_s,
        point.audio_s_per_s,
        point.p50_ms,
        point.p99_ms,
        per_request,
        os.getloadavg()[0],
    )


def markdown(points: Sequence[OverheadPoint], context: str) -> str:
    lines = [
        context,
        "",
        "CPU milliseconds per request, by process; 'cores per 10k audio-s/s' is the server's CPU "
        "(every process but perf_analyzer) that 10,000 audio-seconds per second of such clips would take. "
        "The libtorch classifier runs inside the server process: its share is in the server column.",
        "",
        "| classifier | instances | clips | c | requests/s | audio-s/s | p50 ms | p99 ms | server | preprocess "
        "| classifier runner | perf_analyzer | server total | cores per 10k audio-s/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        ms = point.cpu_ms_per_request
        audio_s = point.audio_s_per_s / point.requests_per_s
        cores = point.server_ms_per_request / 1000.0 * 10_000.0 / audio_s
        lines.append(
            f"| {point.runtime} | {point.instances} | {point.workload} | {point.concurrency} "
            f"| {point.requests_per_s:,.0f} | {point.audio_s_per_s:,.0f} "
            f"| {point.p50_ms:.1f} | {point.p99_ms:.1f} | "
            + " | ".join(f"{ms[role]:.2f}" for role in ROLES)
            + f" | {point.server_ms_per_request:.2f} | {cores:.1f} |"
        )
    return "\n".join(lines)


def stall_markdown(probes: Sequence[StallProbe], clients: int, duration_s: float, workload: str) -> str:
    lines = [
        f"{clients} synchronous clients, {workload} clips, {duration_s:.0f} s per round, the classifier's runtime "
        f"and instances alternating round by round; stalled: requests over {STALL_MS:.0f} ms.",
        "",
        "| classifier | instances | round | requests | p99 ms | max ms | stalled |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for probe in probes:
        lines.append(
            f"| {probe.runtime} | {probe.instances} | {probe.number} | {probe.requests:,} | {probe.p99_ms:.1f} "
            f"| {probe.max_ms:.0f} | {probe.stalled} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workloads", nargs="+", default=["1s", "4s", "10s"], help="clip lengths (default: %(default)s)"
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[8, 32], help="(default: %(default)s)")
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=list(RUNTIMES),
        default=list(RUNTIMES),
        help="classifier runtimes: the Python-backend runner, the libtorch backend (default: %(default)s)",
    )
    parser.add_argument(
        "--instances", nargs="+", type=int, default=[1, 2], help="classifier instances (default: %(default)s)"
    )
    parser.add_argument(
        "--point-s", type=float, default=10.0, help="perf_analyzer's budget per point (default: %(default)s)"
    )
    parser.add_argument(
        "--batching",
        choices=["gpu", "cpu"],
        default="gpu",
        help="which target's dynamic-batching settings the served models get (default: %(default)s)",
    )
    parser.add_argument(
        "--stall-rounds",
        type=int,
        default=3,
        help="rounds of the stall probe per instance count (default: %(default)s)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only, leave docs/benchmarks.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    batching = BatchingSettings.for_target(args.batching)
    workloads, clips = make_workloads(args.workloads, clips_per_length=8, mixed_count=16)
    installs = {runtime: install_for(runtime) for runtime in args.runtimes}  # a missing backend fails first
    setups = [(runtime, instances) for runtime in args.runtimes for instances in args.instances]
    points = []
    with tempfile.TemporaryDirectory() as scratch:
        for runtime, instances in setups:
            settings = dataclasses.replace(batching, classifier_instances=instances)
            repository = constant_repository(Path(scratch) / f"{runtime}-{instances}", settings, runtime)
            with TritonServer(repository, install=installs[runtime]) as server:
                for workload in workloads:
                    for concurrency in args.concurrency:
                        point = measure(
                            server,
                            runtime,
                            instances,
                            workload,
                            concurrency,
                            point_s=args.point_s,
                            scratch=Path(scratch),
                        )
                        log(
                            f"{runtime}, {instances} instance(s), {workload.name} c={concurrency}: "
                            f"{point.requests_per_s:,.0f} requests/s, p99 {point.p99_ms:.0f} ms, "
                            f"server CPU {point.server_ms_per_request:.2f} ms a request"
                        )
                        points.append(point)
        probes = []
        stall_workload = workloads[0]
        for number in range(1, args.stall_rounds + 1):
            for runtime, instances in setups:
                with TritonServer(Path(scratch) / f"{runtime}-{instances}", install=installs[runtime]) as server:
                    probe = stall_probe(
                        server.endpoints.grpc_url,
                        stall_workload,
                        clients=STALL_CLIENTS,
                        duration_s=args.point_s,
                        runtime=runtime,
                        instances=instances,
                        number=number,
                    )
                log(
                    f"stall probe, {runtime}, {instances} instance(s), round {number}: "
                    f"{probe.stalled} of {probe.requests} over {STALL_MS:.0f} ms"
                )
                probes.append(probe)
    context = (
        f"Measured {datetime.date.today()} on {machine_name('cpu')}, load average (1 min) "
        f"{min(p.load for p in points):.1f}-{max(p.load for p in points):.1f}; "
        f"`{' '.join(['python benchmarks/serving_overhead.py', *(sys.argv[1:] if argv is None else argv)])}`. "
        f"The served ensemble and preprocess model with a constant classifier (no model), the {args.batching} "
        f"targets' batching (max batch {batching.max_batch_size}, queue delay {batching.max_queue_delay_us} µs, "
        f"{batching.preprocess_instances} preprocess instances), the classifier on the CPU "
        f"({', '.join(args.runtimes)}); clips: {clips}."
    )
    table = markdown(points, context)
    if probes:
        table += "\n\n" + stall_markdown(probes, STALL_CLIENTS, args.point_s, stall_workload.name)
    print(table)
    if not args.no_write:
        write_section(REPO_ROOT / "docs" / "benchmarks.md", "overhead", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
