"""The TorchScript form of a classifier: traced with its ragged batch, behind the served guard, in a precision."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..model.batched_classifier import ConvForm, RaggedEmotionClassifier
from ..model.int8_products import calibrate, unchecked, with_int8_linears
from ..model.loading import LoadedModel
from ..model.served_classifier import UNLIMITED_SAMPLES, serve_form
from ..repository.description import Target
from ..triton_models.waveform import FloatArray
from .precision import TORCH_DTYPES, Precision

__all__ = ["conv_form_for", "trace"]


def conv_form_for(target: Target) -> ConvForm:
    """GPU targets take the matrix-product convolutions (cuDNN is slow on those two shapes), a CPU the native ones."""
    return "native" if target == "cpu" else "matmul"


def trace(
    loaded: LoadedModel,
    sample_rate: int,
    *,
    dtype: Precision = "fp32",
    device: str = "cpu",
    conv_form: ConvForm = "native",
    max_samples: int = UNLIMITED_SAMPLES,
    calibration: Sequence[FloatArray] = (),
) -> torch.jit.ScriptModule:
    """Trace on `device` with the weights in `dtype` (the eager model itself is left as it is); the
    served guard answers clips over `max_samples` (the export's maximum duration) with its zero row.
    int8 rounds its weights on `calibration` (normalised speech, not the gate's)."""
    model = loaded.model
    if dtype != "fp32":
        model = copy.deepcopy(model)
        nn.Module.to(model, TORCH_DTYPES[dtype])  # in place; transformers' own `to` wrapper confuses mypy
    if dtype == "int8":
        if not calibration:
            raise ValueError("int8 products need calibration speech")
        with_int8_linears(model, loaded.model, calibrate(loaded.model, calibration))
    wrapper = RaggedEmotionClassifier(model, conv_form).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    lengths = [sample_rate, (sample_rate * 3) // 5]
    flat = torch.randn(sum(lengths), generator=generator).to(device)
    ends = torch.tensor(lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(device)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        # WavLM's attention hands torch a bool key-padding mask beside its float position bias, as it does in HF.
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask", category=UserWarning)
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            wrapper, (flat, ends), check_trace=False
        )
        guarded = serve_form(traced, loaded.model.config, max_samples=max_samples)
        unchecked(guarded)  # tracing ran the int8 products here; the saved file checks them where it is loaded
        return guarded
