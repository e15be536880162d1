"""The exported `model.pt` in this process, as the ensemble runs it: the limit of this hardware."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

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
            inprocess_call(module, device), workload, size, system=system, budget_s=budget_s, device=device
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
