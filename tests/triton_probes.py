"""Raw tritonclient requests, server statistics and the hardening report table (process memory:
benchmarks/process_memory.py).

The hardening tests talk to the server with tritonclient directly (not the SDK) wherever the
server's own behaviour is under test, so that no client-side check can hide a server-side gap.
"""

from __future__ import annotations

import dataclasses
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

SAMPLE_RATE = 16000
RUNTIMES = ("python", "libtorch")
"""The classifier runtimes, each serving the fp32 export of the tests' tiny model."""
SERVED = (*RUNTIMES, "python-auto")
"""What the shared tests run against (`served` in conftest): both runtimes on fp32, and the Python runner
on the default export (`--dtype auto`: int8 or bf16 on CPUs that compute them, as users get it)."""
_LOCAL = threading.local()


def raw_client(url: str) -> Any:
    """One tritonclient per thread and URL: channels are reused, as a real client would."""
    clients: dict[str, Any] = _LOCAL.__dict__.setdefault("clients", {})
    if url not in clients:
        clients[url] = grpcclient.InferenceServerClient(url)
    return clients[url]


def tensor(array: npt.NDArray[Any], *, name: str = "audio", datatype: str = "FP32") -> Any:
    request = grpcclient.InferInput(name, list(array.shape), datatype)
    request.set_data_from_numpy(array)
    return request


def infer(url: str, array: npt.NDArray[Any], **options: Any) -> npt.NDArray[np.float32]:
    """The first row of `infer_rows` (a request of one clip); raises tritonclient's InferenceServerException."""
    first: npt.NDArray[np.float32] = infer_rows(url, array, **options)[0]
    return first


def infer_rows(
    url: str,
    array: npt.NDArray[Any],
    *,
    model: str = "emotion",
    name: str = "audio",
    datatype: str = "FP32",
    output: str = "probabilities",
    headers: Mapping[str, str] | None = None,
    timeout_s: float | None = 60.0,
) -> npt.NDArray[np.float32]:
    """Every row of `output` of one request (one per clip it carries)."""
    response = raw_client(url).infer(
        model,
        [tensor(array, name=name, datatype=datatype)],
        outputs=[grpcclient.InferRequestedOutput(output)],
        headers=dict(headers or {}),
        client_timeout=timeout_s,
    )
    return np.asarray(response.as_numpy(output), dtype=np.float32)


def refusal(url: str, array: npt.NDArray[Any], **kwargs: Any) -> InferenceServerException:
    """The error a request that must fail gets; AssertionError if it was served."""
    try:
        infer(url, array, **kwargs)
    except InferenceServerException as error:
        return error
    raise AssertionError(f"the server accepted a request it must refuse: {kwargs} shape {list(array.shape)}")


def classifier_runtime(url: str) -> str:
    """ "libtorch" when the server's classifier runs in Triton's libtorch backend, else "python" (the runner)."""
    config = raw_client(url).get_model_config("classifier", as_json=True)["config"]
    return "libtorch" if config.get("platform") == "pytorch_libtorch" else "python"


def clip(seconds: float, *, seed: int = 0, amplitude: float = 0.1) -> npt.NDArray[np.float32]:
    """A [1, samples] noise clip: what the ensemble takes."""
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal((1, round(seconds * SAMPLE_RATE)))).astype(np.float32)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelCounts:
    """Cumulative counters of one model from Triton's statistics extension."""

    inferences: int
    executions: int
    successes: int
    failures: int

    def __sub__(self, other: ModelCounts) -> ModelCounts:
        return ModelCounts(
            self.inferences - other.inferences,
            self.executions - other.executions,
            self.successes - other.successes,
            self.failures - other.failures,
        )


def model_counts(url: str, model: str, *, headers: Mapping[str, str] | None = None) -> ModelCounts:
    stats = raw_client(url).get_inference_statistics(model, headers=dict(headers or {}), as_json=True)
    (entry,) = stats["model_stats"]
    inference = entry.get("inference_stats", {})
    return ModelCounts(
        inferences=int(entry.get("inference_count", 0)),
        executions=int(entry.get("execution_count", 0)),
        successes=int(inference.get("success", {}).get("count", 0)),
        failures=int(inference.get("fail", {}).get("count", 0)),
    )


def counts_after(
    url: str, model: str, before: ModelCounts, *, successes: int, headers: Mapping[str, str] | None = None
) -> ModelCounts:
    """The change since `before` once `successes` more have been counted: Triton updates its
    statistics just after it sends the responses, so a client can read them a moment too early."""
    deadline = time.monotonic() + 5.0
    while True:
        change = model_counts(url, model, headers=headers) - before
        if change.successes >= successes or time.monotonic() > deadline:
            return change
        time.sleep(0.01)


def settled_counts(url: str, model: str, *, headers: Mapping[str, str] | None = None) -> ModelCounts:
    """The counters once they stop moving (two reads 50 ms apart agree), for a baseline."""
    previous = model_counts(url, model, headers=headers)
    for _ in range(100):
        time.sleep(0.05)
        current = model_counts(url, model, headers=headers)
        if current == previous:
            return current
        previous = current
    return previous


def alone_then_together(
    url: str, clips: Sequence[npt.NDArray[np.float32]], concurrency: int
) -> tuple[npt.NDArray[np.float32], float, ModelCounts]:
    """Each clip sent alone, then all of them from `concurrency` threads so that the server batches
    them: the answers alone, the largest change of any answer, and the classifier's counters for
    the concurrent pass."""
    alone = np.stack([infer(url, clip[None, :]) for clip in clips])
    before = settled_counts(url, "classifier")
    with ThreadPoolExecutor(concurrency) as pool:
        together = np.stack(list(pool.map(lambda clip: infer(url, clip[None, :]), clips)))
    change = counts_after(url, "classifier", before, successes=len(clips))
    return alone, float(np.abs(together - alone).max()), change


# ------------------------------------------------------------------------------------------------
# The closing table: every hardening test adds its rows; conftest prints them after the run.


@dataclasses.dataclass(frozen=True, slots=True)
class ReportRow:
    area: str
    case: str
    tried: int
    as_expected: int
    lost: int
    """Accepted requests that got no correct answer (must be 0)."""
    note: str = ""


REPORT: list[ReportRow] = []


def report(area: str, case: str, *, tried: int, as_expected: int, lost: int = 0, note: str = "") -> None:
    REPORT.append(ReportRow(area, case, tried, as_expected, lost, note))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, so the printed report pastes into docs/hardening.md as is."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)) + " |"

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def report_table() -> str:
    rows = [(r.area, r.case, r.tried, r.as_expected, r.lost, r.note) for r in REPORT]
    return format_table(("area", "case", "tried", "as expected", "lost", "note"), rows)


# ------------------------------------------------------------------------------------------------
# `python -m emotion_build serve` as an operator runs it, for the flags and the watchdog.


def group_stubs(pgid: int) -> dict[int, str]:
    """Python-backend stubs (pid -> instance name) of the server whose process group is `pgid`."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid and argv[0].endswith(b"triton_python_backend_stub"):
            stubs[int(entry.name)] = argv[8].decode()
    return stubs


class ServeProcess:
    """`python -m emotion_build serve ARGS` in its own session; started by `start`, stopped by `stop`."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.summary = ""
        self.server_pid = 0
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 120.0) -> ServeProcess:
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emotion_build", "serve", *self.args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
            )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while "listening on" not in self.summary:
            if self.process.poll() is not None and lines.empty():
                raise AssertionError(f"serve exited with {self.process.returncode}: {self.log()[-3000:]}")
            try:
                self.summary += lines.get(timeout=max(min(deadline - time.monotonic(), 1.0), 0.01))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve was not ready after {timeout_s} s: {self.log()[-3000:]}") from None
        match = re.search(r"\(pid (\d+)\)", self.summary)
        assert match, self.summary
        self.server_pid = int(match.group(1))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
