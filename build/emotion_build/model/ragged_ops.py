"""The scripted pieces of the ragged classifier: the steps whose shapes or branches depend on the batch.

Each is `torch.jit.script`ed, not traced, so the batch size, the longest clip, per-clip loops and
the device of any tensor made inside stay dynamic in the exported file.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["clip_group_norm", "grouped_conv_frames", "pad_ragged", "relative_positions", "valid_mask"]


@torch.jit.script
def pad_ragged(flat: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """Scripted (not traced) so the batch size and the longest clip stay dynamic in the export."""
    flat = flat.reshape(-1)
    ends = ends.reshape(-1).to(torch.long)
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=ends.device), ends[:-1]])
    lengths = ends - starts
    max_len = int(lengths.max())
    offsets = torch.arange(max_len, dtype=torch.long, device=flat.device)
    valid = offsets.unsqueeze(0) < lengths.unsqueeze(1)
    index = (starts.unsqueeze(1) + offsets.unsqueeze(0)).clamp(max=flat.numel() - 1)
    padded = torch.where(valid, flat[index], torch.zeros((1, 1), dtype=flat.dtype, device=flat.device))
    return padded, lengths


@torch.jit.script
def valid_mask(steps: Tensor, lengths: Tensor) -> Tensor:
    """[batch, time] True where a step is inside its clip.

    Scripted so the mask is made on the device of the data at run time: traced code would freeze
    `device=cpu` into the file, and libtorch on a GPU instance would then mix CPU and CUDA tensors.
    """
    positions = torch.arange(steps.shape[-1], device=steps.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


@torch.jit.script
def clip_group_norm(hidden: Tensor, valid_frames: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The first conv layer's group norm (one group per channel) over each clip's valid frames, in float32.

    Every clip goes through the fused kernel Hugging Face runs, on its own frames: when all clips
    fill the batch that is one call, otherwise one call per clip, the padded tail set to zero (the
    later conv layers never carry it into a kept frame, but it must be finite: the frame mask
    multiplies it). Each clip's output is then the very sum it would get alone. The masked sums
    this replaced made about ten passes over the batch's largest tensor (512 channels x 3,200
    frames per second of audio): 5x the time of the per-clip calls on ragged CPU batches
    (docs/benchmarks.md, item 7). One host read of the lengths per batch; `pad_ragged` already
    reads the longest. Scripted so the branch and the loop stay dynamic in the export.
    """
    wide = hidden.float()
    wide_weight, wide_bias = weight.float(), bias.float()
    channels = hidden.shape[1]
    if bool((valid_frames == hidden.shape[-1]).all()):
        fused: Tensor = torch.group_norm(wide, channels, wide_weight, wide_bias, eps)
        return fused
    normed = torch.empty_like(wide)
    counts: list[int] = valid_frames.tolist()
    for row, count in enumerate(counts):
        normed[row, :, :count] = torch.group_norm(
            wide[row : row + 1, :, :count], channels, wide_weight, wide_bias, eps
        )[0]
        normed[row, :, count:] = 0.0
    return normed


@torch.jit.script
def grouped_conv_frames(hidden: Tensor, weight: Tensor, bias: Tensor, padding: int, rows_per_chunk: int) -> Tensor:
    """The positional grouped convolution as batched matrix products, on [batch, time, channels].

    `weight` is [groups, in_per_group * kernel, out_per_group]. Each frame's window is unfolded
    and multiplied per group; the output keeps the first `time` frames, as Hugging Face's same-pad
    layer does. Clips go a chunk at a time so the unfolded windows (kernel x the input) stay
    bounded; scripted so the chunk loop stays dynamic in the export.
    """
    batch, steps, channels = hidden.shape[0], hidden.shape[1], hidden.shape[2]
    groups, span, out_per_group = weight.shape[0], weight.shape[1], weight.shape[2]
    kernel = span // (channels // groups)
    padded = nn.functional.pad(hidden, [0, 0, padding, padding])
    windows = padded.unfold(1, kernel, 1)[:, :steps]
    clips_per_chunk = max(1, rows_per_chunk // max(steps, 1))
    outputs: list[Tensor] = []
    for start in range(0, batch, clips_per_chunk):
        chunk = windows[start : start + clips_per_chunk].reshape(-1, groups, span).transpose(0, 1)
        products = torch.baddbmm(bias.view(groups, 1, out_per_group), chunk, weight)
        outputs.append(products.transpose(0, 1).reshape(-1, steps, groups * out_per_group))
    return torch.cat(outputs)


@torch.jit.script
def relative_positions(steps: Tensor) -> Tensor:
    """[time, time] key position minus query position, made on the device of `steps` at run time.

    WavLM's own bias code takes its device from the embedding weight, which tracing would freeze
    into the file (a CPU-traced export would then build CPU tensors on a GPU server)."""
    positions = torch.arange(steps.shape[1], dtype=torch.long, device=steps.device)
    return positions.unsqueeze(0) - positions.unsqueeze(1)
