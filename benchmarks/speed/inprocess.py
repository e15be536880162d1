"""The exported classifier in this process (model.pt, or the OpenVINO IR), as the ensemble runs it: the
limit of this hardware."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from emotion_build.repository.description import Provenance
from emotion_build.triton_models.openvino_engine import IR_FILE
from emotion_build.triton_models.ragged import concatenate
from emotion_build.triton_models.waveform import FloatArray, normalise

from .progress import log
from .results import Point
from .timing import timed_loop
from .workloads import Workload


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


ServedModule = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
"""The served classifier in this process, called as the runner calls it: flat clips and their ends."""


def load_served(repository: Path, device: str, *, threads: int | None = None) -> ServedModule:
    """The repository's classifier as its runner loads it: model.pt through TorchScript, or the OpenVINO IR
    on `threads` (None: all; TorchScript takes its threads from torch_threads instead)."""
    provenance = Provenance.from_json((repository / "classifier" / "1" / "export.json").read_text())
    if provenance.engine == "openvino":
        from emotion_build.export.openvino_ir import EngineModule

        precision = {"float32": "fp32", "bfloat16": "bf16", "int8+bfloat16": "int8"}[provenance.dtype]
        return EngineModule(repository / "classifier" / "1" / IR_FILE, precision, threads=threads or 0)  # type: ignore[arg-type]
    module: ServedModule = torch.jit.load(  # type: ignore[no-untyped-call]
        str(repository / "classifier" / "1" / "model.pt"), map_location=device
    ).eval()
    return module


def inprocess_call(module: ServedModule, device: str) -> Callable[[list[FloatArray]], object]:
    """The served file in this process, as the ensemble runs it: normalise, concatenate, forward."""

    def run(batch: list[FloatArray]) -> object:
        flat, ends = concatenate([normalise(clip, do_normalize=True) for clip in batch])
        with torch.inference_mode():
            return module(torch.from_numpy(flat).to(device), torch.from_numpy(ends).to(device))

    return run


def torchscript_point(
    module: ServedModule,
    workload: Workload,
    size: int,
    *,
    threads: int | None,
    budget_s: float,
    device: str,
    system: str = "torchscript",
) -> Point:
    log(f"the served model in-process on {workload.name}: batch {size}{', 1 thread' if threads == 1 else ''}")
    with torch_threads(threads):
        return timed_loop(
            inprocess_call(module, device), workload, size, system=system, budget_s=budget_s, device=device
        )


def torchscript_points(
    module: ServedModule,
    workload: Workload,
    *,
    batch_sizes: Sequence[int],
    max_batch_audio_s: float,
    budget_s: float,
    device: str,
    one_thread: ServedModule | None = None,
) -> list[Point]:
    """The batch sweep uses the default threads; one more point runs batch 1 on one thread, the setting
    of each served instance, so serving overhead and thread count can be told apart (`one_thread`: the
    module compiled for one thread, where its engine fixes threads at load: OpenVINO)."""
    sweeps: list[tuple[str, int, int | None]] = [("torchscript", size, None) for size in batch_sizes]
    if not device.startswith("cuda"):
        sweeps.append(("torchscript_1t", 1, 1))
    return [
        torchscript_point(
            one_thread if system == "torchscript_1t" and one_thread is not None else module,
            workload,
            size,
            threads=threads,
            budget_s=budget_s,
            device=device,
            system=system,
        )
        for system, size, threads in sweeps
        if size == 1 or size * workload.mean_s <= max_batch_audio_s
    ]
