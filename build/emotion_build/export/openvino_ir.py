"""The classifier converted for the cpu target's OpenVINO engine (triton_models/openvino_engine.py).

What is converted is the ragged classifier taking a padded batch and its clips' lengths
(PaddedClassifier), returning what the served module returns: logits, probabilities and the
pooled embedding, each clip's as if it ran alone (to rounding in bf16, as the gate measures).
int8 quantises the same scope as TorchScript's int8 products, the encoder layers' linear maps,
with NNCF's post-training quantization on the calibration speech
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

from ..model.batched_classifier import RaggedEmotionClassifier
from ..model.families import family_of
from ..model.int8_products import ENCODER_LINEARS
from ..model.loading import LoadedModel
from ..triton_models.openvino_engine import IR_FILE, OpenVinoEngine
from ..triton_models.waveform import FloatArray
from .precision import Precision

__all__ = ["EngineModule", "OpenVinoUnavailableError", "PaddedClassifier", "convert", "openvino_available"]

EXAMPLE_SAMPLES = 16000


class OpenVinoUnavailableError(RuntimeError):
    """OpenVINO (or NNCF, for int8) is not installed or could not convert the model."""


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class PaddedClassifier(RaggedEmotionClassifier):
    """The ragged classifier on clips padded into one batch [clips, samples] with their lengths [clips]:
    the same masks (per-clip group norm, masked attention and positional convolutions, pooling over a
    clip's own frames), each built of plain tensor operations that OpenVINO converts with the batch and
    the length left dynamic. The TorchScript module's scripted helpers (pad_ragged, clip_group_norm's
    per-clip loop) have no such form; the group norm's statistics here are masked sums in float32."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, "native")

    def forward(self, padded: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lengths = lengths.to(torch.long)
        features = self._masked_conv_features(padded, lengths)
        frames = self.frame_lengths(lengths)
        valid = torch.arange(features.shape[1]).unsqueeze(0) < frames.unsqueeze(1)
        return self.classify(features, valid)

    def _masked_conv_features(self, padded: Tensor, lengths: Tensor) -> Tensor:
        hidden = padded.to(self.weight_dtype)
        for index, conv_layer in enumerate(self.conv_layers):
            if index == 0 and self.group_norm_first:
                hidden = self._first_conv(hidden)
                kernel, stride = self.conv_geometry[0]
                frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
                mask = (torch.arange(hidden.shape[-1]).unsqueeze(0) < frames.unsqueeze(1)).unsqueeze(1).float()
                count = frames.view(-1, 1, 1).float()
                wide = hidden.float() * mask
                centred = (wide - wide.sum(-1, keepdim=True) / count) * mask
                variance = (centred * centred).sum(-1, keepdim=True) / count
                norm: nn.GroupNorm = conv_layer.layer_norm
                normed = centred / torch.sqrt(variance + norm.eps) * norm.weight.float().view(1, -1, 1)
                normed = (normed + norm.bias.float().view(1, -1, 1)) * mask
                hidden = conv_layer.activation(normed.to(hidden.dtype))
            else:
                hidden = conv_layer(hidden.unsqueeze(1) if index == 0 else hidden)
        features: Tensor = hidden.transpose(1, 2)
        return features


def convert(loaded: LoadedModel, precision: Precision, calibration: Sequence[FloatArray]) -> Any:
    """The model as an openvino.Model with the batch and the clip length dynamic; int8 quantised on `calibration`
    (normalised speech). Raises OpenVinoUnavailableError when OpenVINO cannot do it."""
    if precision == "fp16":
        raise ValueError("fp16 is for the GPU targets")
    try:
        import openvino
    except ImportError as error:
        raise OpenVinoUnavailableError("the openvino package is not installed") from error
    wrapper = PaddedClassifier(loaded.model).eval()
    example = (torch.zeros(2, EXAMPLE_SAMPLES), torch.tensor([EXAMPLE_SAMPLES, EXAMPLE_SAMPLES * 3 // 4]))
    try:
        with torch.no_grad():
            model = openvino.convert_model(wrapper, example_input=example, input=[(-1, -1), (-1,)])
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
        nncf.Dataset([(np.asarray(clip, dtype=np.float32)[None], np.array([clip.size])) for clip in calibration]),
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
    """The engine as the export's checks call a module: (flat clips, their ends) -> three [clips, ...] tensors,
    all the clips in one padded batch, as the runner batches them."""

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
