"""The cpu target's OpenVINO engine: the ragged classifier as OpenVINO IR.

OpenVINO fuses what TorchScript runs op by op on a CPU (GELU, norms, softmax and the precision
conversions around each bf16 product): a 4 s clip took 72 ms against TorchScript bf16's 132 ms on
two Sapphire Rapids threads, 48 of those 132 in layout copies and conversions (docs/benchmarks.md).
The IR takes clips padded into one batch ([clips, samples]) and their lengths ([clips]), batch and
length dynamic, and answers logits, probabilities and the pooled embedding per clip, each as if the
clip ran alone: the masks of the TorchScript module, in plain tensor operations.

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
(converted one clip at a time) wrongly, logits off by 12, when its very first inference was a single
frame (400 samples); after any longer first clip, single frames and all else were right
(tests/test_openvino_engine.py)."""


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
        """The clips in one padded batch: each output, rows in the clips' order ([clips, classes] twice,
        [clips, width]). Callers group clips of similar length (ragged.length_groups): padding costs."""
        lengths = np.array([clip.size for clip in clips], dtype=np.int64)
        padded = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
        for row, clip in enumerate(clips):
            padded[row, : clip.size] = clip.reshape(-1)
        results = self._request.infer([padded, lengths])
        return [np.array(results[index], dtype=np.float32).reshape(len(clips), -1) for index in range(OUTPUTS)]
