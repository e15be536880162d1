"""The CPU runner's split of a ragged batch into groups of similar length, and the merge back."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from emotion_build.triton_models.ragged import length_groups, merge_groups, unanswered_rows


def padded_cost(lengths: list[int], groups: list[list[int]]) -> int:
    return sum(len(group) * max(lengths[i] for i in group) for group in groups)


def test_equal_lengths_stay_one_batch_and_mixed_lengths_split_by_padding() -> None:
    assert length_groups([16000] * 8, max_padding=0.0) == [list(range(8))]
    lengths = [160000, 16000, 17000, 64000, 16500, 150000]
    groups = length_groups(lengths, max_padding=0.1)
    assert groups == [[1, 4, 2], [3], [5, 0]]
    assert padded_cost(lengths, groups) <= 1.1 * sum(lengths)
    assert length_groups(lengths, max_padding=math.inf) == [list(range(6))]
    assert length_groups(lengths, max_padding=0.0) == [[1], [4], [2], [3], [5], [0]]


@pytest.mark.parametrize("seed", range(5))
def test_every_clip_lands_in_exactly_one_group_within_the_padding_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1600, 480000, size=int(rng.integers(1, 40))).tolist()
    groups = length_groups(lengths, max_padding=0.25)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        assert len(group) * max(lengths[i] for i in group) <= 1.25 * sum(lengths[i] for i in group) + 1e-6


def test_merge_puts_rows_back_in_batch_order() -> None:
    groups = [[2, 0], [1]]
    outputs: list[list[npt.NDArray[np.generic]]] = [
        [np.array([[2.0], [0.0]], np.float32), np.array([[20, 21], [0, 1]], np.int64)],
        [np.array([[1.0]], np.float32), np.array([[10, 11]], np.int64)],
    ]
    logits, pairs = merge_groups(groups, outputs)
    assert logits.tolist() == [[0.0], [1.0], [2.0]] and logits.dtype == np.float32
    assert pairs.tolist() == [[0, 1], [10, 11], [20, 21]]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_padding"):
        length_groups([1, 2], max_padding=-0.1)
    with pytest.raises(ValueError, match="at least one clip"):
        length_groups([], max_padding=0.1)
    with pytest.raises(ValueError, match="rows for a group"):
        merge_groups([[0, 1]], [[np.zeros((1, 4), np.float32)]])


def test_only_rows_that_are_zero_in_every_output_are_unanswered() -> None:
    logits = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0]], np.float32)
    probabilities = np.array([[0.0, 0.0], [0.5, 0.5], [0.9, 0.1]], np.float32)
    embedding = np.zeros((3, 5), np.float32)
    assert unanswered_rows([logits, probabilities, embedding]) == [0]
    assert unanswered_rows([np.zeros((2, 4), np.float32)]) == [0, 1]
    with pytest.raises(ValueError, match="outputs"):
        unanswered_rows([])
