"""The engines a user could run the same model on without a server: OpenVINO and ONNX Runtime, each a
plain loop over the converted Hugging Face model in a process of its own, on the same threads.

Each peer converts the checkpoint the way its documentation shows (OpenVINO's PyTorch converter;
`torch.onnx.export` for ONNX Runtime) and is called on one clip at a time, or on padded batches (a
clip's answer then depends on its batch-mates, as HF's padded batches do). The int8 peers quantise
the scope this project's int8 does, the encoder layers' linear maps: broader scopes broke the
answers (NNCF's default PTQ scope moved probabilities by 0.93 on random weights, ORT's default
dynamic int8 by 0.14). Every peer's fidelity is measured like the export's gate: max |Δprob| against
eager fp32 on the gate's speech, one clip per call.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from emotion_build.model.int8_products import ENCODER_LINEARS
from emotion_build.triton_models.waveform import FloatArray, normalise

from .child_process import ChildProcess
from .progress import log
from .results import PeerFidelity, Point
from .systems import SYSTEM_NAMES
from .timing import timed_loop
from .workloads import Workload

__all__ = ["PEERS", "PeerFidelity", "PeerProcess", "fidelity", "peer_points"]

PEERS: dict[str, str] = {key: SYSTEM_NAMES[key] for key in ("peer_ov", "peer_ov_int8", "peer_ort", "peer_ort_int8")}
"""Each peer's system key and its name in the tables (systems.py)."""
_LINEAR = "|".join(name for names in ENCODER_LINEARS.values() for name in names)
_BLOCKS = "|".join(ENCODER_LINEARS)


class _Probabilities(torch.nn.Module):
    """The model card's model, as a user converts it: input values in, class probabilities out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(input_values=input_values).logits, dim=-1)


def _padded(batch: Sequence[FloatArray]) -> npt.NDArray[np.float32]:
    longest = max(clip.size for clip in batch)
    padded = np.zeros((len(batch), longest), dtype=np.float32)
    for row, clip in enumerate(batch):
        padded[row, : clip.size] = clip
    return padded


def _openvino(model: Any, threads: int, calibration: Sequence[FloatArray], int8: bool, scratch: Path) -> Any:
    import openvino

    converted = openvino.convert_model(
        _Probabilities(model).eval(), example_input=torch.zeros(1, 16000), input=[(-1, -1)]
    )
    if int8:
        import nncf

        wanted = re.compile(rf"\.encoder\.layers\.\d+\.({_BLOCKS})\.({_LINEAR})/")
        matmuls = [op.get_friendly_name() for op in converted.get_ops() if op.get_type_name() == "MatMul"]
        converted = nncf.quantize(
            converted,
            nncf.Dataset([clip[None] for clip in calibration]),
            subset_size=len(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(
                names=[name for name in matmuls if not wanted.search(name)],
                types=["Convolution", "GroupConvolution"],
                validate=False,
            ),
        )
    compiled = openvino.Core().compile_model(
        converted, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    )
    request = compiled.create_infer_request()
    request.infer([np.zeros((1, 16000), np.float32)])  # a first clip of one second (openvino_engine.WARMUP_SAMPLES)
    return lambda batch: np.array(request.infer([_padded(batch)])[0])


def _onnxruntime(model: Any, threads: int, calibration: Sequence[FloatArray], int8: bool, scratch: Path) -> Any:
    import onnxruntime

    path = scratch / "model.onnx"
    torch.onnx.export(
        _Probabilities(model).eval(),
        (torch.zeros(1, 16000),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input_values"],
        output_names=["probabilities"],
        dynamic_axes={"input_values": {0: "batch", 1: "samples"}, "probabilities": {0: "batch"}},
    )
    if int8:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        wanted = re.compile(rf"/encoder/layers\.\d+/({_BLOCKS})/({_LINEAR})/MatMul")
        nodes = [node.name for node in onnx.load(str(path)).graph.node if wanted.search(node.name)]
        quantized = scratch / "model-int8.onnx"
        quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
        path = quantized
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"input_values": _padded(batch)})[0]


_BUILDERS: dict[str, tuple[Callable[..., Any], bool]] = {
    "peer_ov": (_openvino, False),
    "peer_ov_int8": (_openvino, True),
    "peer_ort": (_onnxruntime, False),
    "peer_ort_int8": (_onnxruntime, True),
}


class PeerProcess(ChildProcess):
    """One peer in a spawned process (its own threads and allocator), answering points and probabilities."""

    def __init__(self, system: str, model_ref: str, *, threads: int, calibration: Sequence[FloatArray]) -> None:
        super().__init__(PEERS[system], _peer_child, (system, model_ref, threads, list(calibration)))
        self.system = system
        self._receive()

    def point(self, workload: Workload, *, batch_size: int, budget_s: float) -> Point:
        self._connection.send(("point", workload, batch_size, budget_s))
        point = self._receive()
        assert isinstance(point, Point)
        return point

    def probabilities(self, clips: Sequence[FloatArray]) -> npt.NDArray[np.float32]:
        """Each clip's class probabilities, one clip per call."""
        self._connection.send(("probabilities", list(clips)))
        rows = self._receive()
        assert isinstance(rows, np.ndarray)
        return rows


def _peer_child(connection: Any, system: str, model_ref: str, threads: int, calibration: list[FloatArray]) -> None:
    try:
        from transformers import AutoModelForAudioClassification, Wav2Vec2FeatureExtractor

        torch.set_num_threads(threads)
        model = AutoModelForAudioClassification.from_pretrained(model_ref, attn_implementation="eager").eval()
        do_normalize = bool(Wav2Vec2FeatureExtractor.from_pretrained(model_ref).do_normalize)
        build, int8 = _BUILDERS[system]
        with tempfile.TemporaryDirectory(prefix="emotion-peer-") as scratch, torch.no_grad():
            engine = build(model, threads, calibration, int8, Path(scratch))

            def call(batch: Sequence[FloatArray]) -> Any:  # the feature extractor's normalisation, then the engine
                return engine([normalise(clip, do_normalize=do_normalize) for clip in batch])

            connection.send("ready")
            while (request := connection.recv()) is not None:
                if request[0] == "probabilities":
                    connection.send(np.concatenate([call([clip]) for clip in request[1]]).astype(np.float32))
                    continue
                _, workload, batch_size, budget_s = request
                connection.send(timed_loop(call, workload, batch_size, system=system, budget_s=budget_s))
    except Exception as error:  # every failure goes back to the parent, as a picklable error
        connection.send(RuntimeError(f"{PEERS[system]}: {type(error).__name__}: {error}"))


def peer_points(peer: PeerProcess, workload: Workload, *, batch_sizes: Sequence[int], budget_s: float) -> list[Point]:
    log(f"{PEERS[peer.system]} on {workload.name}: batch sizes {', '.join(map(str, batch_sizes))}")
    return [peer.point(workload, batch_size=size, budget_s=budget_s) for size in batch_sizes]


def fidelity(
    peer: PeerProcess, clips: Sequence[FloatArray], reference: npt.NDArray[np.float32], *, limit: float
) -> PeerFidelity:
    """The peer's max |Δprob| against eager fp32 (`reference`) on `clips` (raw speech: the peer normalises)."""
    found = PeerFidelity(peer.system, float(np.abs(peer.probabilities(clips) - reference).max()), len(clips), limit)
    log(f"{PEERS[peer.system]}: max |Δprob| {found.max_abs_prob_diff:.4f} against eager fp32 on {len(clips)} clips")
    return found
