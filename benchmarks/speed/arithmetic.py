"""How much arithmetic a clip costs the model, and how fast this machine multiplies matrices.

Throughput alone does not say how far a system is from what the hardware allows. The model's
floating-point operations per clip are counted from its config (every convolution, projection,
attention product and feed-forward layer; norms, activations and softmax are left out: a few per
cent of the total), and the machine's own ceiling is a large matrix product timed in each
precision and thread count, so a row can say "x GFLOP/s, y % of the bf16 peak".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Arithmetic", "MatmulPeak", "clip_flops", "measure_peaks"]


def clip_flops(config: Any, samples: int) -> float:
    """Multiply-adds x 2 of one clip of `samples` through a wav2vec2-style classifier (any family in
    docs/families.md; WavLM's gated position bias is left out, a few per cent of a layer)."""
    macs = 0.0
    frames, channels = samples, 1
    for width, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True):
        frames = (frames - kernel) // stride + 1
        macs += frames * width * channels * kernel
        channels = width
    hidden = config.hidden_size
    macs += frames * channels * hidden  # feature projection
    groups = config.num_conv_pos_embedding_groups
    stacked_kernel = getattr(config, "conv_pos_kernel_size", None)  # data2vec-audio: a stack of small convs
    if stacked_kernel is None:
        macs += frames * hidden * (hidden // groups) * config.num_conv_pos_embeddings  # positional conv
    else:
        macs += config.num_conv_pos_embeddings * frames * hidden * (hidden // groups) * stacked_kernel
    per_layer = 4 * hidden * hidden + 2 * hidden * config.intermediate_size  # q, k, v, out; feed-forward
    attention = 2 * frames * hidden  # scores and weighted sum, per frame
    macs += config.num_hidden_layers * frames * (per_layer + attention)
    macs += frames * hidden * config.classifier_proj_size + config.classifier_proj_size * config.num_labels
    return float(2.0 * macs)


@dataclasses.dataclass(frozen=True, slots=True)
class MatmulPeak:
    dtype: str
    threads: int
    """Torch intra-op threads it ran on (0: a GPU)."""
    gflop_per_s: float
    """Best of several 2048 x 2048 x 2048 products: the rate the linear layers can reach at most."""


@dataclasses.dataclass(frozen=True, slots=True)
class Arithmetic:
    """What a run needs to say how close each system came to the machine's limit."""

    peaks: tuple[MatmulPeak, ...]
    gflop_per_audio_s: dict[str, float]
    """Per workload: the model's GFLOP per second of its audio (attention grows with clip length)."""
    precision: dict[str, str]
    """Per system key: the precision its matrix products run in ("float32", "bfloat16", ...)."""

    def peak(self, precision: str, threads: int) -> MatmulPeak | None:
        return next((p for p in self.peaks if (p.dtype, p.threads) == (precision, threads)), None)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Arithmetic:
        return cls(
            peaks=tuple(MatmulPeak(**peak) for peak in saved["peaks"]),
            gflop_per_audio_s=dict(saved["gflop_per_audio_s"]),
            precision=dict(saved["precision"]),
        )


def measure_peaks(
    dtypes: Sequence[torch.dtype], threads: Sequence[int], *, device: str = "cpu", repeats: int = 8
) -> tuple[MatmulPeak, ...]:
    """`threads` 0: leave torch's setting (a GPU's peak does not depend on it)."""
    size = 2048 if device == "cpu" else 8192
    before = torch.get_num_threads()
    peaks = []
    try:
        for count in threads:
            if count:
                torch.set_num_threads(count)
            for dtype in dtypes:
                left = torch.randn(size, size, device=device).to(dtype)
                right = torch.randn(size, size, device=device).to(dtype)
                with torch.inference_mode():
                    best = min(_timed_product(left, right) for _ in range(repeats + 1))
                peaks.append(MatmulPeak(str(dtype).removeprefix("torch."), count, 2 * size**3 / best / 1e9))
    finally:
        torch.set_num_threads(before)
    return tuple(peaks)


def _timed_product(left: torch.Tensor, right: torch.Tensor) -> float:
    start = time.perf_counter()
    _ = left @ right
    if left.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start
