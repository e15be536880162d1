"""The encoder's linear maps as int8 products: VNNI computes them at twice bf16's rate on a CPU.

Half the model's time on a CPU is the transformer layers' six linear maps. `torch._int_mm` multiplies
int8 by int8 into exact int32 sums (about 400 GFLOP/s on one Zen 4 thread against bf16's 190-200),
and everything around the products stays in the bf16 module. Two roundings make the int8 operands:

- activations per row at each call (one scale per frame): a clip's frames never share a scale with
  another clip's, and the int32 sums are exact, so a clip's answer does not depend on its batch;
- weights once, at export, per output channel, by GPTQ (Frantar et al., "GPTQ: Accurate
  Post-Training Quantization for Generative Pre-trained Transformers", 2022): columns are rounded
  in turn and each one's rounding error is spread over the columns not yet rounded, weighted by
  how the layer's inputs co-vary on calibration speech, so the layer's outputs move far less than
  with rounding to nearest. On full-size wav2vec2-base (random weights, the gate's 40 speech clips)
  nearest rounding moved probabilities by 0.029 and flipped a label; GPTQ by 0.012, as bf16 alone.

The export gates the result on speech like any reduced precision (precision.run_gate).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..triton_models.cpu_features import int8_layers
from ..triton_models.waveform import FloatArray
from .families import backbone, family_of

__all__ = [
    "ENCODER_LINEARS",
    "Int8Linear",
    "calibrate",
    "gptq_round",
    "unchecked",
    "with_int8_linears",
]

ENCODER_LINEARS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "feed_forward": ("intermediate_dense", "output_dense"),
}
"""Each encoder layer's blocks and the linear maps in them that become int8 products."""
LEVELS = 127
"""Symmetric int8: -127..127, so that negating a value never overflows."""
DAMPING = 0.1
"""Added to the input covariance's diagonal, as a share of its mean: measured 0.1 best of 0.01 and 0.1."""
BLOCK = 128
"""Columns rounded together before their errors reach the rest (the result is the same for any block)."""


UNCHECKED = 0
INT8_KERNELS = 1
FLOAT32_PRODUCTS = 2
"""How an Int8Linear computes its products (its `products` buffer): not yet checked on this CPU, with
torch._int_mm, or as float32 products of the same int8 levels (where _int_mm is not exact)."""


class Int8Linear(nn.Module):
    """nn.Linear with its weight as int8 per output channel; the output in the module's precision.

    Scripted, so that its choice of product survives tracing: on a CPU without int8 dot-product
    instructions (VNNI, AMX) oneDNN multiplies int8 by pairs of 16-bit sums that saturate, and
    `torch._int_mm` is wrong by up to millions (AVX2, AVX512_CORE). `check_products` finds out on
    the CPU the module runs on, against the exact answer, before the first product: the runner
    calls it at load, and forward() calls it itself for any other loader (Triton's libtorch
    backend). Where the kernels are not exact, the same int8 levels are multiplied in float32:
    every partial sum of a 768-wide row is an integer below 2**24, exact in float32, and a 3072-wide
    one rounds only past 2**24, by 6e-8 of itself, so the answers are the exported ones, slower.
    The check's verdict lives in the `products` buffer; the export saves it unchecked (`unchecked`)."""

    # TorchScript reads no globals, only the module's constants.
    __constants__: ClassVar[list[str]] = ["levels", "unchecked", "int8_kernels", "float32_products"]

    def __init__(self, rounded: Tensor, scale: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        self.levels, self.unchecked = LEVELS, UNCHECKED
        self.int8_kernels, self.float32_products = INT8_KERNELS, FLOAT32_PRODUCTS
        self.register_buffer("weight_t", rounded.to(torch.int8).t())
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("bias", torch.zeros_like(scale).float() if bias is None else bias.detach().float())
        self.register_buffer("products", torch.tensor(UNCHECKED, dtype=torch.int8))
        self.dtype = dtype

    @torch.jit.export
    def check_products(self) -> bool:
        """Whether torch._int_mm is exact on this CPU for this layer's shape; the forward then uses it
        or float32 products. Operands of +127 saturate a 16-bit pair sum fastest (2 x 255 x 127 after
        oneDNN's shift to unsigned); their exact product is known without multiplying."""
        weight: Tensor = self.weight_t  # type: ignore[assignment]
        inputs, outputs = weight.shape[0], weight.shape[1]
        probe = torch.full([1, inputs], self.levels, dtype=torch.int8)
        sums = torch._int_mm(probe, torch.full([inputs, outputs], self.levels, dtype=torch.int8))
        exact = bool((sums == self.levels * self.levels * inputs).all())
        products: Tensor = self.products  # type: ignore[assignment]
        products.fill_(self.int8_kernels if exact else self.float32_products)
        return exact

    def forward(self, hidden: Tensor) -> Tensor:
        if hidden.device.type != "cpu":
            raise RuntimeError(
                "this classifier's int8 products run on a CPU only (torch._int_mm); export the GPU targets "
                "with --dtype fp16, bf16 or fp32"
            )
        products: Tensor = self.products  # type: ignore[assignment]
        if int(products) == self.unchecked:
            self.check_products()
        rows = hidden.reshape(-1, hidden.shape[-1]).float()
        scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / self.levels
        levels = torch.round(rows / scale).to(torch.int8)
        weight: Tensor = self.weight_t  # type: ignore[assignment]
        if int(products) == self.int8_kernels:
            sums = torch._int_mm(levels, weight).float()
        else:
            sums = torch.mm(levels.float(), weight.float())
        weight_scale: Tensor = self.weight_scale  # type: ignore[assignment]
        bias: Tensor = self.bias  # type: ignore[assignment]
        out = torch.addcmul(bias, sums * scale, weight_scale)
        return out.to(self.dtype).reshape(list(hidden.shape[:-1]) + [-1])  # noqa: RUF005 (TorchScript)


def unchecked(module: Any) -> None:
    """Forget where `module`'s int8 products were checked (tracing runs forward() once): the saved file
    must check them again on the CPU that loads it."""
    for layer in int8_layers(module):
        layer.products.fill_(UNCHECKED)


def _linears(model: Any) -> Iterator[tuple[str, nn.Module, str]]:
    """(key, block, attribute) of every linear map that becomes int8, in a stable order.

    WavLM's attention hands its projections' weights to F.multi_head_attention_forward instead of
    calling them, so there only the feed-forward maps (two thirds of the layers' products) change."""
    blocks = ENCODER_LINEARS
    if family_of(model).relative_position_bias:
        blocks = {"feed_forward": ENCODER_LINEARS["feed_forward"]}
    for index, layer in enumerate(backbone(model).encoder.layers):
        for block_name, names in blocks.items():
            block = getattr(layer, block_name)
            for name in names:
                if not isinstance(getattr(block, name, None), nn.Linear):
                    raise ValueError(f"int8 products need {block_name}.{name} to be a linear map in every layer")
                yield f"{index}.{block_name}.{name}", block, name


def calibrate(model: Any, clips: Sequence[FloatArray]) -> dict[str, Tensor]:
    """Each linear map's input second moment (Σ xᵀx over every frame of `clips`), from the fp32 model.

    `clips` are normalised as the server feeds them; the result is float64 (sums of many frames)."""
    moments: dict[str, Tensor] = {}
    hooks = []
    for key, block, name in _linears(model):
        linear: nn.Linear = getattr(block, name)
        moments[key] = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float64)

        def accumulate(_: nn.Module, inputs: tuple[Tensor, ...], __: Tensor, key: str = key) -> None:
            frames = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            moments[key] += frames.t() @ frames

        hooks.append(linear.register_forward_hook(accumulate))
    try:
        with torch.inference_mode():
            for clip in clips:
                model(input_values=torch.from_numpy(clip)[None])
    finally:
        for hook in hooks:
            hook.remove()
    return moments


def gptq_round(weight: Tensor, moment: Tensor, *, damping: float = DAMPING) -> tuple[Tensor, Tensor]:
    """`weight` [out, in] rounded to int8 levels per output channel -> (levels as float, scales [out]).

    The scale of each row is its largest |weight| over LEVELS; GPTQ chooses the levels."""
    work = weight.detach().double().clone()
    scale = work.abs().amax(1).clamp_min(1e-12) / LEVELS
    hessian = moment.double().clone()
    unused = torch.diag(hessian) == 0  # inputs that never moved: their weights cannot matter
    hessian[unused, unused] = 1.0
    work[:, unused] = 0.0
    columns = work.shape[1]
    hessian += damping * torch.diag(hessian).mean() * torch.eye(columns, dtype=torch.float64)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    levels = torch.zeros_like(work)
    for first in range(0, columns, BLOCK):
        last = min(first + BLOCK, columns)
        block = work[:, first:last].clone()
        errors = torch.zeros_like(block)
        local = inverse[first:last, first:last]
        for column in range(last - first):
            rounded = torch.round(block[:, column] / scale).clamp(-LEVELS, LEVELS)
            levels[:, first + column] = rounded
            error = (block[:, column] - rounded * scale) / local[column, column]
            block[:, column:] -= error.unsqueeze(1) * local[column, column:].unsqueeze(0)
            errors[:, column] = error
        work[:, last:] -= errors @ inverse[first:last, last:]
    return levels.float(), scale.float()


def with_int8_linears(model: Any, fp32_model: Any, moments: dict[str, Tensor]) -> None:
    """Replace `model`'s encoder linear maps (its weights already in the module's precision) by int8
    products rounded from `fp32_model`'s weights with `moments` (calibrate)."""
    dtype = next(model.parameters()).dtype
    for (key, block, name), (_, fp32_block, _) in zip(_linears(model), _linears(fp32_model), strict=True):
        fp32_linear: nn.Linear = getattr(fp32_block, name)
        levels, scale = gptq_round(fp32_linear.weight, moments[key])
        setattr(block, name, torch.jit.script(Int8Linear(levels, scale, fp32_linear.bias, dtype)))
