"""The cpu target's OpenVINO engine: the classifier as OpenVINO IR, run one clip at a time.

OpenVINO fuses what TorchScript runs op by op on a CPU (GELU, norms, softmax and the precision
conversions around each bf16 product): a 4 s clip took 72 ms against TorchScript bf16's 132 ms on
two Sapphire Rapids threads, 48 of those 132 in layout copies and conversions (docs/benchmarks.md).
The IR takes one clip ([1, samples], any length) and answers logits, probabilities and the pooled
embedding, as the TorchScript module answers a batch. Each clip runs alone, so its answer cannot
depend on its batch-mates: batch invariance is exact, and nothing is padded.

Used by the runner (classifier_model.py) and, through the same class, by the export's parity check
and precision gate, so the gate measures exactly what is served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["IR_FILE", "OUTPUTS", "PRECISION_HINTS", "OpenVinoEngine"]

IR_FILE = "model.xml"
"""The IR's graph; its weights are model.bin beside it."""
OUTPUTS = 3
"""logits, probabilities, embedding: in the order the TorchScript module returns them."""
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}
"""OpenVINO's inference precision for each exported precision: int8's quantised products sit in a bf16 graph."""
WARMUP_SAMPLES = 16000
"""The first clip the compiled model runs: OpenVINO 2026.4 answered every later clip of a wav2vec2-base IR
wrongly (logits off by 12) when its very first inference was a single frame (400 samples); after any
longer first clip, single frames and all else were right (tests/test_openvino_engine.py)."""


class OpenVinoEngine:
    """One compiled IR on `threads` CPU threads, with one infer request (a runner instance runs one batch at once)."""

    def __init__(self, path: str | os.PathLike[str] | Any, *, threads: int, precision: str) -> None:
        """`path` is the IR's .xml (or an openvino.Model in memory); `precision` is the export's (fp32, bf16,
        int8). On a CPU that has no bf16 instructions OpenVINO runs the graph in f32, which only brings
        the answers closer to the fp32 model the gate compared them with."""
        import openvino  # the runner imports it only for this engine

        core = openvino.Core()
        hint = PRECISION_HINTS[precision]
        if hint == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            hint = "f32"
        self.precision_hint = hint
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": hint,
            # Two runner instances share the machine: pinning would put both on the same cores.
            "ENABLE_CPU_PINNING": False,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else path
        self._request = core.compile_model(model, "CPU", config).create_infer_request()
        self.run([np.zeros(WARMUP_SAMPLES, dtype=np.float32)])

    def run(self, clips: Sequence[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
        """Each output for every clip, rows in the clips' order: [clips, classes] twice, [clips, width]."""
        rows: list[list[npt.NDArray[np.float32]]] = [[] for _ in range(OUTPUTS)]
        for clip in clips:
            results = self._request.infer([np.ascontiguousarray(clip, dtype=np.float32).reshape(1, -1)])
            for index in range(OUTPUTS):
                rows[index].append(np.array(results[index], dtype=np.float32).reshape(1, -1))
        return [np.concatenate(output) for output in rows]
