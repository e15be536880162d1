"""What a burst of oversized requests costs the server's memory, and who refuses them.

Sends `--requests` concurrent requests of `--samples` float32 samples each (far over the export's
max duration) to a served repository, all released at once, and prints every process's RSS and
PSS before the burst, at its peak and `--settle-s` seconds after it, with the answer each request
got. `--bursts 2` repeats it, to show whether a second burst adds to what the first left.

    python benchmarks/oversize_burst.py                                    # issue 25: 12 x 60,000,000 samples
    python benchmarks/oversize_burst.py --model classifier --requests 8    # straight at the classifier

Without `--model-repository` it exports the tiny random cpu repository the tests serve. The
requests are serialised once and sent through raw gRPC, so the client holds one copy in flight
per request instead of tritonclient's three: the burst of issue 25 then fits beside the server on
a 24 GiB machine. `--server-arg` passes tritonserver flags through to try a setting, and
`--no-bounds` launches tritonserver without the launcher's memory bounds (the figures before the fix).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
from process_memory import PeakSampler, Resident, processes, region_mib, snapshot, total
from tritonclient.grpc import service_pb2

from emotion_build.repository.description import AUDIO_INPUT, CLASSIFIER_MODEL, ENSEMBLE_MODEL, WAVEFORM
from emotion_build.server.launcher import TritonServer

__all__ = ["Burst", "Outcome", "burst", "burst_table", "outcome_summary"]

_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
RATE = 16000
_MIN_AVAILABLE_GIB = 4.0
"""The script stops before a burst that would leave the machine less than this."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What one request of the burst got back."""

    code: str
    """gRPC status name ("OK", "INVALID_ARGUMENT", ...)."""
    message: str
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class Burst:
    """The server's memory around one burst, by process name (tritonserver, preprocess_0_0, ...)."""

    before: dict[str, Resident]
    peak: dict[str, Resident]
    peak_total_pss_kib: int
    after: dict[str, Resident]
    regions_before_mib: dict[str, float]
    regions_after_mib: dict[str, float]
    outcomes: tuple[Outcome, ...]
    settle_s: float

    @property
    def growth_mib(self) -> float:
        """Total PSS after the burst less before it."""
        return (total(self.after).pss_kib - total(self.before).pss_kib) / 1024


def burst(server: TritonServer, send: Callable[[], Outcome], requests: int, *, settle_s: float) -> Burst:
    """`requests` calls of `send` from as many threads, released together, with the memory around them.

    `before` is read idle, `after` once the server has been idle `settle_s` seconds past the last answer."""
    pids = processes(server)
    regions_before = region_mib(server)
    before = snapshot(pids)
    start = threading.Barrier(requests)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def one() -> None:
        start.wait()
        outcome = send()
        with lock:
            outcomes.append(outcome)

    with PeakSampler(pids) as sampler:
        threads = [threading.Thread(target=one, name=f"oversize-{i}") for i in range(requests)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    time.sleep(settle_s)
    assert processes(server) == pids, "a process of the server was replaced during the burst"
    return Burst(
        before=before,
        peak=sampler.peak,
        peak_total_pss_kib=sampler.peak_total_pss_kib,
        after=snapshot(pids),
        regions_before_mib=regions_before,
        regions_after_mib=region_mib(server),
        outcomes=tuple(outcomes),
        settle_s=settle_s,
    )


def burst_table(result: Burst) -> str:
    """Markdown: each process's RSS and PSS before, at the peak and after, in MiB."""

    def mib(kib: int) -> str:
        return f"{kib / 1024:.0f}"

    lines = [
        "| process | RSS before | RSS peak | RSS after | PSS before | PSS peak | PSS after | /dev/shm region |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, before in result.before.items():
        peak, after = result.peak[name], result.after[name]
        region = ""
        if name in result.regions_before_mib:
            region = f"{result.regions_before_mib[name]:.0f} → {result.regions_after_mib[name]:.0f}"
        lines.append(
            f"| {name} | {mib(before.rss_kib)} | {mib(peak.rss_kib)} | {mib(after.rss_kib)} | "
            f"{mib(before.pss_kib)} | {mib(peak.pss_kib)} | {mib(after.pss_kib)} | {region} |"
        )
    first, last = total(result.before), total(result.after)
    lines.append(
        f"| total | {mib(first.rss_kib)} | | {mib(last.rss_kib)} | {mib(first.pss_kib)} | "
        f"{mib(result.peak_total_pss_kib)} | {mib(last.pss_kib)} | |"
    )
    return "\n".join(lines)


def outcome_summary(outcomes: Sequence[Outcome]) -> str:
    """ "12 x INVALID_ARGUMENT 'in ensemble ...' in 1.2-3.4 s", one line per distinct answer."""
    groups: dict[tuple[str, str], list[float]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.code, outcome.message[:160]), []).append(outcome.seconds)
    return "\n".join(
        f"{len(times)} x {code} {message!r} in {min(times):.1f}-{max(times):.1f} s"
        for (code, message), times in sorted(groups.items())
    )


def serialised_request(model: str, samples: int) -> bytes:
    """One ModelInferRequest of a [1, samples] FP32 clip, serialised once for every sender."""
    name = AUDIO_INPUT if model == ENSEMBLE_MODEL else WAVEFORM
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype="FP32")
    tensor.shape.extend([1, samples])
    request.raw_input_contents.append(np.full(samples, 0.01, dtype=np.float32).tobytes())
    data: bytes = request.SerializeToString()
    return data


def raw_sender(url: str, payload: bytes, *, timeout_s: float) -> Callable[[], Outcome]:
    """A send() for burst(): the payload as is, on a channel of its own per call, as separate clients would."""

    def send() -> Outcome:
        started = time.perf_counter()
        with grpc.insecure_channel(url) as channel:
            call = channel.unary_unary(_MODEL_INFER, response_deserializer=service_pb2.ModelInferResponse.FromString)
            try:
                call(payload, timeout=timeout_s)
            except grpc.RpcError as error:
                return Outcome(error.code().name, str(error.details()), time.perf_counter() - started)
        return Outcome("OK", "", time.perf_counter() - started)

    return send


def _served(send: Callable[[], Outcome]) -> float:
    outcome = send()
    if outcome.code != "OK":
        raise SystemExit(f"the server refused a valid 1 s clip: {outcome.code} {outcome.message}")
    return outcome.seconds


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _tiny_repository(directory: Path) -> Path:
    """The export's defaults, as an operator gets them, on the tiny random model."""
    output = directory / "model_repository"
    command = [sys.executable, "-m", "emotion_build", "export", "--random-init", "tiny", "--seed", "3"]
    subprocess.run([*command, "--target", "cpu", "--output", str(output)], check=True, capture_output=True)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None, help="a cpu export (default: the tiny one)")
    parser.add_argument("--model", choices=(ENSEMBLE_MODEL, CLASSIFIER_MODEL), default=ENSEMBLE_MODEL)
    parser.add_argument("--requests", type=int, default=12, help="concurrent requests per burst")
    parser.add_argument("--samples", type=int, default=60_000_000, help="float32 samples per request")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=30.0, help="idle time before the 'after' reading")
    parser.add_argument("--server-arg", action="append", default=[], help="extra tritonserver flag (repeatable)")
    parser.add_argument("--no-bounds", action="store_true", help="launch without the launcher's memory bounds")
    args = parser.parse_args(argv)

    payload_gib = args.requests * args.samples * 4 / 2**30
    with tempfile.TemporaryDirectory(prefix="oversize-") as scratch:
        repository = args.model_repository or _tiny_repository(Path(scratch))
        server = TritonServer(repository, extra_args=args.server_arg, memory_bounds=not args.no_bounds)
        with server:
            payload = serialised_request(args.model, args.samples)
            send = raw_sender(server.endpoints.grpc_url, payload, timeout_s=600)
            one_second = raw_sender(server.endpoints.grpc_url, serialised_request(args.model, RATE), timeout_s=60)
            for _ in range(4):  # the state normal traffic leaves: every stub has run a request
                _served(one_second)
            print(
                f"{args.bursts} burst(s) of {args.requests} x {args.samples:,} samples "
                f"({len(payload) / 1e6:,.0f} MB each) at '{args.model}', tritonserver {server.install.version}, "
                f"memory bounds {'off' if args.no_bounds else 'on'}, extra flags {args.server_arg or 'none'}",
                flush=True,
            )
            for number in range(1, args.bursts + 1):
                if _available_gib() < payload_gib + _MIN_AVAILABLE_GIB:
                    print(f"stopped: {_available_gib():.1f} GiB available, the burst needs {payload_gib:.1f} more")
                    return 1
                result = burst(server, send, args.requests, settle_s=args.settle_s)
                print(f"\nburst {number}: after = {args.settle_s:g} s idle after the last answer; MiB\n")
                print(burst_table(result))
                print(f"\nPSS growth {result.growth_mib:+.0f} MiB; answers:\n{outcome_summary(result.outcomes)}")
                print(f"a 1 s clip after it: served in {_served(one_second):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
