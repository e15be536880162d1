"""The module that gets traced: a ragged batch of waveforms in; per-clip logits, probabilities and
pooled embedding out.

Triton's ragged batching hands the classifier every clip of a batch concatenated into one flat
tensor plus the accumulated sample counts (where each clip ends). wav2vec2-base's answer changes
when a clip is zero-padded (the first conv layer's group norm spans time, attention and mean
pooling see the padding), so this forward re-pads internally and masks every place where time is
mixed: group-norm statistics over each clip's own samples, the attention mask in the encoder, and
masked mean pooling. A clip's result is therefore the same alone or next to any other clips.

The interface is float32 whatever the weights are: a half-precision export (`--dtype fp16`) casts
the waveform inside, keeps the group-norm statistics and the pooling in float32 (sums over up to
half a million samples overflow float16), and returns float32, so configs and clients never change.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from transformers import Wav2Vec2ForSequenceClassification

__all__ = [
    "CONV_FORMS",
    "ConvForm",
    "RaggedEmotionClassifier",
    "clip_group_norm",
    "grouped_conv_frames",
    "pad_ragged",
    "valid_mask",
]

ConvForm = Literal["native", "matmul"]
CONV_FORMS: tuple[ConvForm, ...] = ("native", "matmul")
POSITIONAL_ROWS_PER_CHUNK = 8192
"""Frames whose windows are unfolded at once by the matmul positional conv: about 1.6 GB in fp16."""


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


class RaggedEmotionClassifier(nn.Module):
    """Reuses the Hugging Face submodules and weights; only the time-mixing steps are re-written.

    `conv_form="matmul"` (the GPU targets) also re-writes two convolutions as matrix products: the
    first conv layer (one input channel; group-norm models, whose first layer this module runs
    itself) and the grouped positional conv (kernel 128, 16 groups).
    cuDNN has no tensor-core kernel for either shape in half precision: on an H200 they took most
    of a batch's time (docs/benchmarks.md, "GPU"). The products compute the same sums, so answers
    agree to rounding; on a CPU the native convolutions are faster and stay.
    """

    def __init__(self, model: Wav2Vec2ForSequenceClassification, conv_form: ConvForm = "native") -> None:
        super().__init__()
        config = model.config
        if config.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"unsupported feat_extract_norm {config.feat_extract_norm!r}")
        if config.do_stable_layer_norm:
            raise ValueError("stable-layer-norm wav2vec2 variants are not supported by this export")
        self.group_norm_first = config.feat_extract_norm == "group"
        first_norm = model.wav2vec2.feature_extractor.conv_layers[0].layer_norm
        if self.group_norm_first and first_norm.num_groups != first_norm.num_channels:  # type: ignore[union-attr]
            raise ValueError("the first conv layer's group norm must have one group per channel")
        self.conv_layers = model.wav2vec2.feature_extractor.conv_layers
        self.conv_geometry = [(int(k), int(s)) for k, s in zip(config.conv_kernel, config.conv_stride, strict=True)]
        self.feature_projection = model.wav2vec2.feature_projection
        self.encoder = model.wav2vec2.encoder
        self.use_weighted_layer_sum = bool(config.use_weighted_layer_sum)
        self.layer_weights = model.layer_weights if self.use_weighted_layer_sum else None
        self.projector = model.projector
        self.classifier = model.classifier
        self.weight_dtype = next(model.parameters()).dtype
        if conv_form not in CONV_FORMS:
            raise ValueError(f"conv_form must be one of {', '.join(CONV_FORMS)}, got {conv_form!r}")
        self.matmul_convs = conv_form == "matmul"
        if self.matmul_convs:
            self._register_matmul_weights()
        else:
            # Hugging Face's positional conv recomputes its weight norm on every call (about 6 ms of
            # a 200 ms clip on one CPU thread); the weights are fixed, so it is computed once here.
            positional: nn.Conv1d = self.encoder.pos_conv_embed.conv
            self.register_buffer("positional_conv_weight", positional.weight.detach().clone())

    def _register_matmul_weights(self) -> None:
        """The two convolutions' weights in matrix-product layout, computed once (the positional
        conv's weight norm included) and saved with the module."""
        first: nn.Conv1d = self.conv_layers[0].conv  # type: ignore[assignment]
        if first.in_channels != 1:
            raise ValueError("the first conv layer must read one channel (raw audio)")
        self.register_buffer(
            "first_conv_weight", first.weight.detach().reshape(first.out_channels, -1).t().contiguous()
        )
        self.register_buffer("first_conv_bias", None if first.bias is None else first.bias.detach().clone())
        positional: nn.Conv1d = self.encoder.pos_conv_embed.conv
        weight = positional.weight.detach()
        outputs, per_group, kernel = weight.shape
        groups = int(positional.groups)
        layout = weight.reshape(groups, outputs // groups, per_group, kernel).permute(0, 2, 3, 1)
        self.register_buffer("positional_weight", layout.reshape(groups, per_group * kernel, -1).contiguous())
        bias = positional.bias if positional.bias is not None else torch.zeros(outputs, dtype=weight.dtype)
        self.register_buffer("positional_bias", bias.detach().clone())
        self.positional_padding = int(positional.padding[0])

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        for kernel, stride in self.conv_geometry:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, waveform: Tensor, waveform_ends: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        padded, lengths = pad_ragged(waveform, waveform_ends)
        features = self._conv_features(padded, lengths)
        return self.classify(features, valid_mask(features.transpose(1, 2), self.frame_lengths(lengths)))

    def classify(self, features: Tensor, frame_valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Conv features [batch, frames, channels] to logits, probabilities and the pooled embedding,
        every step that mixes frames masked by `frame_valid` [batch, frames]."""
        hidden, _ = self.feature_projection(features)
        hidden = hidden * frame_valid.unsqueeze(-1).to(hidden.dtype)
        hidden = hidden + self._positional(hidden)
        hidden = self.encoder.layer_norm(hidden)

        mask_value = torch.finfo(hidden.dtype).min
        additive_mask = (~frame_valid).to(hidden.dtype)[:, None, None, :] * mask_value
        layer_outputs = [hidden]
        for layer in self.encoder.layers:
            hidden = layer(hidden, attention_mask=additive_mask)
            layer_outputs.append(hidden)

        if self.layer_weights is not None:
            weights = nn.functional.softmax(self.layer_weights, dim=-1).to(hidden.dtype)
            hidden = (torch.stack(layer_outputs, dim=1) * weights.view(-1, 1, 1)).sum(dim=1)

        projected = self.projector(hidden).float()
        valid = frame_valid.unsqueeze(-1).to(projected.dtype)
        pooled = (projected * valid).sum(dim=1) / valid.sum(dim=1)
        logits = self.classifier(pooled.to(self.weight_dtype)).float()
        return logits, nn.functional.softmax(logits, dim=-1), pooled

    def _positional(self, hidden: Tensor) -> Tensor:
        embed = self.encoder.pos_conv_embed
        if not self.matmul_convs:
            conv: nn.Conv1d = embed.conv
            weight_now: Tensor = self.positional_conv_weight  # type: ignore[assignment]
            frames = nn.functional.conv1d(
                hidden.transpose(1, 2), weight_now, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
            )
            native: Tensor = embed.activation(embed.padding(frames)).transpose(1, 2)
            return native
        weight: Tensor = self.positional_weight  # type: ignore[assignment]
        bias: Tensor = self.positional_bias  # type: ignore[assignment]
        products = grouped_conv_frames(hidden, weight, bias, self.positional_padding, POSITIONAL_ROWS_PER_CHUNK)
        activated: Tensor = embed.activation(products)
        return activated

    def _first_conv(self, waveform: Tensor) -> Tensor:
        """[batch, samples] -> [batch, channels, frames]."""
        conv: nn.Conv1d = self.conv_layers[0].conv  # type: ignore[assignment]
        if not self.matmul_convs:
            native: Tensor = conv(waveform.unsqueeze(1))
            return native
        kernel, stride = self.conv_geometry[0]
        weight: Tensor = self.first_conv_weight  # type: ignore[assignment]
        bias: Tensor | None = self.first_conv_bias  # type: ignore[assignment]
        frames = waveform.unfold(1, kernel, stride) @ weight
        if bias is not None:
            frames = frames + bias
        return frames.transpose(1, 2).contiguous()

    def _conv_features(self, padded: Tensor, lengths: Tensor) -> Tensor:
        """Conv stack with the first layer's group norm taken over each clip's valid frames only.

        Later conv layers need no mask: without padding, a valid output frame only reads valid
        input frames, so whatever the padded tail holds never reaches a frame that is kept.
        """
        hidden = padded.to(self.weight_dtype)
        for index, conv_layer in enumerate(self.conv_layers):
            if index == 0 and self.group_norm_first:
                hidden = self._first_conv(hidden)
                kernel, stride = self.conv_geometry[0]
                valid_frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
                norm: nn.GroupNorm = conv_layer.layer_norm  # type: ignore[assignment]
                normed = clip_group_norm(hidden, valid_frames, norm.weight, norm.bias, float(norm.eps))
                hidden = conv_layer.activation(normed.to(hidden.dtype))  # type: ignore[operator]
            else:
                hidden = conv_layer(hidden.unsqueeze(1) if index == 0 else hidden)
        return hidden.transpose(1, 2)
