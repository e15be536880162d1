"""Conv-stack arithmetic in plain Python, for the export and the served guard alike."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["receptive_field"]


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Input samples behind one output frame of a stack of 1-D convolutions (no padding, no dilation)."""
    if len(kernels) != len(strides) or not kernels:
        raise ValueError(f"need one stride per kernel, got kernels {list(kernels)} and strides {list(strides)}")
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * jump
        jump *= stride
    return field
