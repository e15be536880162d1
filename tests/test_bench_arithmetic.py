"""The bench's count of the model's arithmetic (benchmarks/speed/arithmetic.py)."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
from speed.arithmetic import Arithmetic, MatmulPeak, clip_flops

from emotion_build.model.loading import random_model


def test_a_toy_config_is_counted_by_hand() -> None:
    toy = types.SimpleNamespace(
        conv_dim=(4, 4),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        hidden_size=8,
        num_conv_pos_embedding_groups=2,
        num_conv_pos_embeddings=4,
        intermediate_size=16,
        num_hidden_layers=3,
        classifier_proj_size=6,
        num_labels=4,
    )
    # 100 samples -> 19 frames -> 9 frames.
    convs = 19 * 4 * 1 * 10 + 9 * 4 * 4 * 3
    projection, positional = 9 * 4 * 8, 9 * 8 * 4 * 4
    layers = 3 * 9 * (4 * 8 * 8 + 2 * 8 * 16 + 2 * 9 * 8)
    head = 9 * 8 * 6 + 6 * 4
    assert clip_flops(toy, 100) == 2 * (convs + projection + positional + layers + head)


def test_wav2vec2_base_costs_about_14_gflop_per_audio_second() -> None:
    config = random_model("base").model.config
    one_second, ten_seconds = clip_flops(config, 16000) / 1e9, clip_flops(config, 160000) / 10e9
    assert 13.5 < one_second < 14.2
    assert one_second < ten_seconds < 15.5  # attention grows with the clip


def test_peaks_are_looked_up_by_precision_and_threads() -> None:
    arithmetic = Arithmetic(
        peaks=(MatmulPeak("float32", 2, 150.0), MatmulPeak("bfloat16", 2, 390.0), MatmulPeak("bfloat16", 1, 200.0)),
        gflop_per_audio_s={"1 s": 13.8},
        precision={"served": "bfloat16"},
    )
    assert arithmetic.peak("bfloat16", 1) == MatmulPeak("bfloat16", 1, 200.0)
    assert arithmetic.peak("float16", 2) is None
    assert Arithmetic.from_dict(json.loads(json.dumps(dataclasses.asdict(arithmetic)))) == arithmetic


@pytest.mark.parametrize("samples", [399, 400, 719])
def test_clips_shorter_than_two_frames_still_count(samples: int) -> None:
    config = random_model("tiny").model.config
    assert clip_flops(config, samples) > 0
