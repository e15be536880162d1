"""The classifier converted for the cpu target's OpenVINO engine (triton_models/openvino_engine.py).

What is converted is the Hugging Face model's own forward for one unpadded clip (no attention mask,
mean pooling over every frame), returning what the served module returns: logits, probabilities
and the pooled embedding. One clip at a time needs none of the ragged module's masks, and no
answer can depend on a batch. int8 quantises the same scope as TorchScript's int8 products, the
encoder layers' linear maps, with NNCF's post-training quantization on the calibration speech
(activations per tensor, calibrated; weights per channel); its overflow fix keeps weights to 7 bits
so that CPUs without VNNI, whose int8 products saturate 16-bit pair sums, answer the same.
Conversions stay in the export; the gate and parity run the converted model through the engine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .families import backbone, family_of
from .int8_products import ENCODER_LINEARS
from .loading import LoadedModel
from .precision import Precision
from .triton_models.openvino_engine import IR_FILE, OpenVinoEngine
from .triton_models.waveform import FloatArray

__all__ = ["EngineModule", "OpenVinoUnavailableError", "SingleClipClassifier", "convert", "openvino_available"]

EXAMPLE_SAMPLES = 16000


class OpenVinoUnavailableError(RuntimeError):
    """OpenVINO (or NNCF, for int8) is not installed or could not convert the model."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class SingleClipClassifier(nn.Module):
    """Hugging Face's audio-classification forward for one clip [1, samples] -> (logits, probabilities, embedding)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.core = backbone(model)
        self.weighted = bool(model.config.use_weighted_layer_sum)

    def forward(self, waveform: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.core(waveform, output_hidden_states=self.weighted)
        if self.weighted:
            weights = nn.functional.softmax(self.model.layer_weights, dim=-1)
            hidden = (torch.stack(outputs.hidden_states, dim=1) * weights.view(-1, 1, 1)).sum(dim=1)
        else:
            hidden = outputs.last_hidden_state
        pooled = self.model.projector(hidden).mean(dim=1)
        logits = self.model.classifier(pooled)
        return logits, nn.functional.softmax(logits, dim=-1), pooled


def convert(loaded: LoadedModel, precision: Precision, calibration: Sequence[FloatArray]) -> Any:
    """The model as an openvino.Model with a dynamic clip length; int8 quantised on `calibration`
    (normalised speech). Raises OpenVinoUnavailableError when OpenVINO cannot do it."""
    if precision == "fp16":
        raise ValueError("fp16 is for the GPU targets")
    try:
        import openvino
    except ImportError as error:
        raise OpenVinoUnavailableError("the openvino package is not installed") from error
    wrapper = SingleClipClassifier(loaded.model).eval()
    try:
        with torch.no_grad():
            model = openvino.convert_model(wrapper, example_input=torch.zeros(1, EXAMPLE_SAMPLES), input=[(1, -1)])
    except Exception as error:  # the converter's errors come from many layers of its own
        raise OpenVinoUnavailableError(f"OpenVINO could not convert the model: {_first_line(error)}") from error
    if precision != "int8":
        return model
    if not calibration:
        raise ValueError("int8 needs calibration speech")
    return _quantised(model, loaded, calibration)


def _quantised(model: Any, loaded: LoadedModel, calibration: Sequence[FloatArray]) -> Any:
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    except ImportError as error:
        raise OpenVinoUnavailableError("int8 for OpenVINO needs the nncf package") from error
    blocks = dict(ENCODER_LINEARS)
    if family_of(loaded.model).relative_position_bias:  # WavLM: its attention's projections are not linears
        blocks = {"feed_forward": ENCODER_LINEARS["feed_forward"]}
    wanted = re.compile(
        r"\.encoder\.layers\.\d+\.("
        + "|".join(blocks)
        + r")\.("
        + "|".join(n for v in blocks.values() for n in v)
        + r")/"
    )
    matmuls = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"]
    kept = [name for name in matmuls if wanted.search(name)]
    if not kept:
        raise OpenVinoUnavailableError("found none of the encoder's linear maps in the converted model")
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf.quantize(
        model,
        nncf.Dataset([np.asarray(clip, dtype=np.float32)[None] for clip in calibration]),
        subset_size=len(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(
            names=[name for name in matmuls if name not in kept],
            types=["Convolution", "GroupConvolution"],
            validate=False,
        ),
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
    )


def save(model: Any, directory: Path) -> Path:
    """model.xml and model.bin into `directory`; the .xml's path."""
    import openvino

    path = directory / IR_FILE
    openvino.save_model(model, str(path), compress_to_fp16=False)
    return path


class EngineModule:
    """The engine as the export's checks call a module: (flat clips, their ends) -> three [clips, ...] tensors."""

    def __init__(self, path: Path, precision: Precision, *, threads: int = 0) -> None:
        self.engine = OpenVinoEngine(path, threads=threads, precision=precision)

    def __call__(self, waveform: Tensor, waveform_ends: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        flat = waveform.detach().cpu().numpy().reshape(-1)
        ends = [int(end) for end in waveform_ends.reshape(-1).tolist()]
        starts = [0, *ends[:-1]]
        logits, probabilities, embedding = self.engine.run([flat[s:e] for s, e in zip(starts, ends, strict=True)])
        return torch.from_numpy(logits), torch.from_numpy(probabilities), torch.from_numpy(embedding)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
