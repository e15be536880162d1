"""The Hugging Face pipeline, the baseline: built as the model card builds it, in a process of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from emotion_build.triton_models.heap import keep_freed_memory
from emotion_build.triton_models.waveform import FloatArray

from .child_process import ChildProcess
from .progress import log
from .results import Point
from .timing import timed_loop
from .workloads import Workload


def hf_pipeline(model_ref: str, device: str, dtype: str = "fp32") -> tuple[Any, str]:
    """The pipeline exactly as the model card builds it (fp32), or with its weights in bf16 as a user
    could cast them; returns it and its attention implementation."""
    from transformers import pipeline

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    classifier = pipeline("audio-classification", model=model_ref, device=device, dtype=torch_dtype)
    return classifier, str(getattr(classifier.model.config, "_attn_implementation", "?"))


def hf_point(
    classifier: Any, workload: Workload, *, batch_size: int | None, budget_s: float, device: str, dtype: str = "fp32"
) -> Point:
    """One clip per call (batch_size None), as the model card calls it, or the pipeline's own batching."""
    if batch_size is None:
        call: Callable[[list[FloatArray]], object] = lambda batch: classifier(batch[0])  # noqa: E731
        system, size = "hf" if dtype == "fp32" else f"hf_{dtype}", 1
    else:
        call, system, size = lambda batch: classifier(batch, batch_size=batch_size), "hf_batch", batch_size
    return timed_loop(call, workload, size, system=system, budget_s=budget_s, device=device)


class HFProcess(ChildProcess):
    """The HF pipeline in a process of its own, by default with malloc as Python leaves it.

    This process keeps freed memory the way the cpu runner does (triton_models/heap.py), so that
    the in-process module is measured as the server runs it. The pipeline is the baseline a user's
    own service would be: built exactly as the model card builds it, in a plain interpreter, so it
    must not inherit that setting (mallopt is per process; a spawned child starts with defaults)."""

    def __init__(self, model_ref: str, device: str, *, keep_freed_mib: int = 0, dtype: str = "fp32") -> None:
        """`keep_freed_mib` > 0 gives the pipeline the runner's malloc setting instead (--hf-malloc runner),
        to show how much of the difference is the allocator; `dtype` "bf16" casts its weights."""
        super().__init__("the HF pipeline", _hf_child, (model_ref, device, keep_freed_mib, dtype))
        self.dtype = dtype
        self.attention: str = self._receive()

    def point(self, workload: Workload, *, batch_size: int | None, budget_s: float) -> Point:
        self._connection.send(("point", workload, batch_size, budget_s))
        point = self._receive()
        assert isinstance(point, Point)
        return point

    def once(self, clip: FloatArray) -> float:
        """Seconds one call of the pipeline on `clip` took, timed in its process (the pipe not counted)."""
        self._connection.send(("once", clip))
        seconds = self._receive()
        assert isinstance(seconds, float)
        return seconds


def _hf_child(connection: Any, model_ref: str, device: str, keep_freed_mib: int, dtype: str) -> None:
    """HFProcess's other end: the pipeline, then one answer per request until None."""
    try:
        if keep_freed_mib > 0 and not keep_freed_memory(keep_freed_mib * 2**20):
            raise RuntimeError("this C library refused glibc's mallopt")
        classifier, attention = hf_pipeline(model_ref, device, dtype)
        connection.send(attention)
        while (request := connection.recv()) is not None:
            if request[0] == "once":
                began = time.perf_counter()
                classifier(request[1])
                connection.send(time.perf_counter() - began)
                continue
            _, workload, batch_size, budget_s = request
            point = hf_point(classifier, workload, batch_size=batch_size, budget_s=budget_s, device=device, dtype=dtype)
            connection.send(point)
    except Exception as error:  # every failure goes back to the parent, as a picklable error
        connection.send(RuntimeError(f"HF pipeline: {type(error).__name__}: {error}"))


def hf_points(hf: HFProcess, workload: Workload, *, batch_size: int | None, budget_s: float) -> list[Point]:
    """One clip per call, then (batch_size given) the pipeline's own batching."""
    log(
        f"HF pipeline ({hf.dtype}) on {workload.name}: one clip per call"
        + (f", then batch_size={batch_size}" if batch_size else "")
    )
    sizes = (None, batch_size) if batch_size else (None,)
    return [hf.point(workload, batch_size=size, budget_s=budget_s) for size in sizes]
