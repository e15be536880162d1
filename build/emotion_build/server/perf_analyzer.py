"""Running `perf_analyzer` from the `tritonclient==2.51.0` wheel on a machine without CUDA.

The wheel's binary links `libcudart.so.12` (shipped by `nvidia-cuda-runtime-cu12`) and Debian's
`libb64-0d`; this module finds the former and builds the command line for the ensemble. Its input
data comes from `emotion_client.perf_data`, the SDK's own audio path.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..repository.description import ENSEMBLE_MODEL

__all__ = ["PerfRow", "perf_analyzer_command", "perf_analyzer_env", "read_perf_csv"]


def perf_analyzer_env() -> dict[str, str]:
    try:
        import nvidia.cuda_runtime as cuda_runtime
    except ImportError as error:
        raise RuntimeError("perf_analyzer needs libcudart.so.12: pip install nvidia-cuda-runtime-cu12") from error
    library_dir = Path(next(iter(cuda_runtime.__path__))) / "lib"
    existing = os.environ.get("LD_LIBRARY_PATH", "")
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in (str(library_dir), existing) if p)}


def perf_analyzer_command(
    grpc_url: str,
    *,
    input_data: Path,
    concurrency: Sequence[int] = (1,),
    measurement_interval_ms: int = 2000,
    extra_args: Sequence[str] = (),
    model: str = ENSEMBLE_MODEL,
) -> list[str]:
    """One clip per request against the ensemble `model` over gRPC, cycling through `input_data`'s clips."""
    binary = shutil.which(
        "perf_analyzer", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if binary is None:
        raise RuntimeError("perf_analyzer not found: pip install 'tritonclient[grpc]==2.51.0' (later wheels lack it)")
    low, high = min(concurrency), max(concurrency)
    step = (high - low) // max(len(concurrency) - 1, 1) or 1
    return [
        binary,
        "-m",
        model,
        "-u",
        grpc_url,
        "-i",
        "grpc",
        "--input-data",
        str(input_data),
        "--concurrency-range",
        f"{low}:{high}:{step}",
        "--measurement-interval",
        str(measurement_interval_ms),
        *extra_args,
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class PerfRow:
    """One concurrency level of a perf_analyzer run (`-f file.csv`), times in milliseconds."""

    concurrency: int
    inferences_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    client_send_ms: float
    network_ms: float
    """Network and the server's send/receive: what the client waited for beyond the server's queue and compute."""
    server_queue_ms: float
    """Summed over the ensemble's steps."""
    server_compute_ms: float
    """Input, infer and output of every step, summed."""
    client_recv_ms: float


def read_perf_csv(text: str) -> list[PerfRow]:
    """Parse perf_analyzer's CSV report (its columns are in microseconds)."""
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        if not record.get("Concurrency"):
            continue

        def ms(column: str, record: dict[str, str] = record) -> float:
            return float(record[column]) / 1000.0

        rows.append(
            PerfRow(
                concurrency=int(record["Concurrency"]),
                inferences_per_s=float(record["Inferences/Second"]),
                p50_ms=ms("p50 latency"),
                p90_ms=ms("p90 latency"),
                p95_ms=ms("p95 latency"),
                p99_ms=ms("p99 latency"),
                client_send_ms=ms("Client Send"),
                network_ms=ms("Network+Server Send/Recv"),
                server_queue_ms=ms("Server Queue"),
                server_compute_ms=ms("Server Compute Input") + ms("Server Compute Infer") + ms("Server Compute Output"),
                client_recv_ms=ms("Client Recv"),
            )
        )
    return rows
