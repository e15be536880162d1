"""The first layer's group norm: one fused call when every clip fills the batch, one per clip otherwise."""

from __future__ import annotations

import torch

from emotion_build.model.batched_classifier import clip_group_norm

CHANNELS = 6


def reference(clip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What Hugging Face runs on one clip alone: nn.GroupNorm with one group per channel."""
    norm = torch.nn.GroupNorm(CHANNELS, CHANNELS, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
    normalised: torch.Tensor = norm(clip)
    return normalised


def test_each_clip_is_normalised_over_its_own_frames_alone_or_padded() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(CHANNELS, generator=generator) + 0.5
    bias = torch.randn(CHANNELS, generator=generator)
    lengths = [37, 50, 12]
    batch = torch.full((len(lengths), CHANNELS, max(lengths)), 1e3)  # the padded tail must not count
    clips = []
    for row, length in enumerate(lengths):
        clip = torch.randn(1, CHANNELS, length, generator=generator) * 3 + 2
        batch[row, :, :length] = clip[0]
        clips.append(clip)

    padded = clip_group_norm(batch, torch.tensor(lengths), weight, bias, 1e-5)
    for row, (clip, length) in enumerate(zip(clips, lengths, strict=True)):
        alone = clip_group_norm(clip, torch.tensor([length]), weight, bias, 1e-5)  # the fused path
        expected = reference(clip, weight, bias)
        torch.testing.assert_close(alone, expected, rtol=0, atol=0)
        # The same kernel on the same frames: a clip's answer in a padded batch is its answer alone.
        torch.testing.assert_close(padded[row : row + 1, :, :length], alone, rtol=0, atol=0)
        assert bool((padded[row, :, length:] == 0).all()), "the padded tail must be zero (finite), not the fill"


def test_equal_lengths_take_the_fused_path_with_the_same_answer() -> None:
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(3, CHANNELS, 40, generator=generator)
    weight, bias = torch.ones(CHANNELS), torch.zeros(CHANNELS)
    fused = clip_group_norm(batch, torch.tensor([40, 40, 40]), weight, bias, 1e-5)
    # Declaring one frame shorter forces the per-clip path over the same frames but one.
    per_clip = clip_group_norm(batch[:, :, :39], torch.tensor([39, 39, 38]), weight, bias, 1e-5)
    torch.testing.assert_close(fused, torch.group_norm(batch, CHANNELS, weight, bias, 1e-5), rtol=0, atol=0)
    alone = torch.group_norm(batch[:, :, :39], CHANNELS, weight, bias, 1e-5)
    torch.testing.assert_close(per_clip[:2], alone[:2], rtol=0, atol=0)
