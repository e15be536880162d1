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

import torch
from torch import Tensor, nn
from transformers import Wav2Vec2ForSequenceClassification

__all__ = ["RaggedEmotionClassifier", "clip_group_norm", "pad_ragged", "valid_mask"]


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

    When every clip fills the batch (one clip alone, or equal lengths) that is plain group norm,
    and the fused kernel is what Hugging Face runs: about 8 % of a clip's CPU time less than the
    masked sums below (docs/benchmarks.md). Scripted so the choice is made per batch at run time.
    """
    wide = hidden.float()
    if bool((valid_frames == hidden.shape[-1]).all()):
        fused: Tensor = torch.group_norm(wide, hidden.shape[1], weight.float(), bias.float(), eps)
        return fused
    mask: Tensor = valid_mask(hidden, valid_frames).unsqueeze(1).to(torch.float32)
    count = mask.sum(dim=-1, keepdim=True)
    mean = (wide * mask).sum(dim=-1, keepdim=True) / count
    centred = wide - mean
    variance = (centred * centred * mask).sum(dim=-1, keepdim=True) / count
    normed = centred * torch.rsqrt(variance + eps)
    return normed * weight.float().view(1, -1, 1) + bias.float().view(1, -1, 1)


class RaggedEmotionClassifier(nn.Module):
    """Reuses the Hugging Face submodules and weights; only the time-mixing steps are re-written."""

    def __init__(self, model: Wav2Vec2ForSequenceClassification) -> None:
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

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        for kernel, stride in self.conv_geometry:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, waveform: Tensor, waveform_ends: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        padded, lengths = pad_ragged(waveform, waveform_ends)
        features = self._conv_features(padded, lengths)
        frames = self.frame_lengths(lengths)
        frame_valid = valid_mask(features.transpose(1, 2), frames)

        hidden, _ = self.feature_projection(features)
        hidden = hidden * frame_valid.unsqueeze(-1).to(hidden.dtype)
        hidden = hidden + self.encoder.pos_conv_embed(hidden)
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

    def _conv_features(self, padded: Tensor, lengths: Tensor) -> Tensor:
        """Conv stack with the first layer's group norm taken over each clip's valid frames only.

        Later conv layers need no mask: without padding, a valid output frame only reads valid
        input frames, so whatever the padded tail holds never reaches a frame that is kept.
        """
        hidden = padded.unsqueeze(1).to(self.weight_dtype)
        for index, conv_layer in enumerate(self.conv_layers):
            if index == 0 and self.group_norm_first:
                hidden = conv_layer.conv(hidden)  # type: ignore[operator]
                kernel, stride = self.conv_geometry[0]
                valid_frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
                norm: nn.GroupNorm = conv_layer.layer_norm  # type: ignore[assignment]
                normed = clip_group_norm(hidden, valid_frames, norm.weight, norm.bias, float(norm.eps))
                hidden = conv_layer.activation(normed.to(hidden.dtype))  # type: ignore[operator]
            else:
                hidden = conv_layer(hidden)
        return hidden.transpose(1, 2)
