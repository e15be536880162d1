"""What Triton's libtorch backend does for a ragged batch, done by hand for the Python-backend runner.

The Python backend hands `execute()` each request separately and never fills `batch_input`
tensors, so the runner builds the flat waveform and the accumulated ends itself and then calls the
identical TorchScript module.

On CPU the runner also splits a batch into groups of similar length (`length_groups`): the module
pads every clip of a batch to the longest one, and on CPU a padded sample costs as much compute as
a real one, so a 1 s clip batched with a 10 s clip would cost ten times its own work. The module's
answers do not depend on their batch neighbours, so the split changes nothing but the time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["concatenate", "length_groups", "merge_groups", "split_rows", "unanswered_rows"]


def concatenate(clips: Sequence[npt.NDArray[np.float32]]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Flat samples and int32 end offsets, exactly as `BATCH_ACCUMULATED_ELEMENT_COUNT` describes them."""
    if not clips:
        raise ValueError("a batch needs at least one clip")
    flat = np.concatenate([np.asarray(clip, dtype=np.float32).reshape(-1) for clip in clips])
    ends = np.cumsum([np.asarray(clip).size for clip in clips]).astype(np.int32)
    return flat, ends


def split_rows(batch: npt.NDArray[np.float32], count: int) -> list[npt.NDArray[np.float32]]:
    """One [1, classes] row per request, the shape each response must carry."""
    if batch.shape[0] != count:
        raise ValueError(f"model returned {batch.shape[0]} rows for {count} requests")
    return [batch[i : i + 1] for i in range(count)]


def length_groups(lengths: Sequence[int], *, max_padding: float) -> list[list[int]]:
    """Indices of `lengths`, grouped so that padding a group to its longest clip adds at most
    `max_padding` (a fraction of the group's own samples); shortest clips first.

    0 runs only equal lengths together, `math.inf` keeps the whole batch as one group.
    """
    if not max_padding >= 0:
        raise ValueError(f"max_padding must be >= 0 (a fraction, or inf), got {max_padding}")
    if not lengths:
        raise ValueError("a batch needs at least one clip")
    if math.isinf(max_padding):
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    current: list[int] = []
    samples = 0
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        length = lengths[index]  # the longest so far: the order is ascending
        if current and (len(current) + 1) * length > (1 + max_padding) * (samples + length):
            groups.append(current)
            current, samples = [], 0
        current.append(index)
        samples += length
    groups.append(current)
    return groups


def merge_groups(
    groups: Sequence[Sequence[int]], outputs: Sequence[Sequence[npt.NDArray[np.generic]]]
) -> list[npt.NDArray[np.generic]]:
    """Each output of the per-group runs put back into the batch's order: row i is clip i's."""
    if len(groups) != len(outputs) or not groups:
        raise ValueError(f"need one set of outputs per group, got {len(outputs)} for {len(groups)} groups")
    count = sum(len(group) for group in groups)
    merged = []
    for k, first in enumerate(outputs[0]):
        rows = np.empty((count, *first.shape[1:]), dtype=first.dtype)
        for group, group_outputs in zip(groups, outputs, strict=True):
            if group_outputs[k].shape[0] != len(group):
                raise ValueError(f"output {k} has {group_outputs[k].shape[0]} rows for a group of {len(group)}")
            rows[list(group)] = group_outputs[k]
        merged.append(rows)
    return merged


def unanswered_rows(outputs: Sequence[npt.NDArray[np.generic]]) -> list[int]:
    """The rows the served module answered with all zeros, its answer for a clip it could not compute
    (served_classifier.py): a classified clip's probabilities sum to 1, so no real answer is all zeros."""
    if not outputs:
        raise ValueError("need the module's outputs")
    zero = np.ones(outputs[0].shape[0], dtype=bool)
    for output in outputs:
        zero &= ~np.asarray(output).reshape(output.shape[0], -1).any(axis=1)
    return [int(row) for row in np.flatnonzero(zero)]
