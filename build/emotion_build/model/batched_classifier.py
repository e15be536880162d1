"""The module that gets traced: a ragged batch of waveforms in; per-clip logits, probabilities and
pooled embedding out, for every family in families.py (wav2vec2, HuBERT, WavLM, data2vec-audio).

Triton's ragged batching hands the classifier every clip of a batch concatenated into one flat
tensor plus the accumulated sample counts (where each clip ends). A zero-padded clip's answer
changes wherever time is mixed, so this forward re-pads internally and masks each such place the
way its encoder kind needs, against each clip alone as the reference:

- group norm over time (the base models' first conv layer): statistics over each clip's own frames;
- layer norm over channels (the stable-layer-norm / XLSR and data2vec-audio conv layers): a frame
  is normalised alone, so nothing; later conv layers never carry the padded tail into a kept frame;
- positional convolutions: padded frames are zeroed before every conv, as the conv's own zero
  padding is when the clip is alone (HuBERT's batch norm and data2vec-audio's stack of normalised
  layers would otherwise turn the padding into values that reach real frames);
- attention: an additive mask, or for WavLM the key-padding mask its attention takes, with the
  relative position bias built for the padded length (it depends only on key - query);
- mean pooling over each clip's own frames.

The interface is float32 whatever the weights are: a half-precision export (`--dtype fp16`) casts
the waveform inside, keeps the group-norm statistics and the pooling in float32 (sums over up to
half a million samples overflow float16), and returns float32, so configs and clients never change.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .families import AudioClassifier, backbone, family_of
from .ragged_ops import clip_group_norm, grouped_conv_frames, pad_ragged, relative_positions, valid_mask

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


class RaggedEmotionClassifier(nn.Module):
    """Reuses the Hugging Face submodules and weights; only the time-mixing steps are re-written.

    `conv_form="matmul"` (the GPU targets) also re-writes two convolutions as matrix products: the
    first conv layer (one input channel; group-norm models, whose first layer this module runs
    itself) and the grouped positional conv (kernel 128, 16 groups).
    cuDNN has no tensor-core kernel for either shape in half precision: on an H200 they took most
    of a batch's time (docs/benchmarks.md, "GPU"). The products compute the same sums, so answers
    agree to rounding; on a CPU the native convolutions are faster and stay.
    """

    def __init__(self, model: AudioClassifier, conv_form: ConvForm = "native") -> None:
        super().__init__()
        config = model.config
        family = family_of(model)
        core = backbone(model)
        self.conv_layers = core.feature_extractor.conv_layers
        first_norm = getattr(self.conv_layers[0], "layer_norm", None)
        self.group_norm_first = isinstance(first_norm, nn.GroupNorm)
        if isinstance(first_norm, nn.GroupNorm) and first_norm.num_groups != first_norm.num_channels:
            raise ValueError("the first conv layer's group norm must have one group per channel")
        self.conv_geometry = [(int(k), int(s)) for k, s in zip(config.conv_kernel, config.conv_stride, strict=True)]
        self.feature_projection = core.feature_projection
        self.encoder = core.encoder
        self.stable_layer_norm = bool(getattr(config, "do_stable_layer_norm", False))
        """Pre-norm layers: the encoder's layer norm comes after the last layer, not before the first."""
        self.relative_position_bias = family.relative_position_bias
        self.stacked_positional_conv = family.stacked_positional_conv
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
        elif not self.stacked_positional_conv:
            # Hugging Face's positional conv recomputes its weight norm on every call (about 6 ms of
            # a 200 ms clip on one CPU thread); the weights are fixed, so it is computed once here.
            positional: nn.Conv1d = self.encoder.pos_conv_embed.conv
            self.register_buffer("positional_conv_weight", positional.weight.detach().clone())

    def _register_matmul_weights(self) -> None:
        """The two convolutions' weights in matrix-product layout, computed once (the positional
        conv's weight norm included) and saved with the module. data2vec-audio's positional stack
        (kernel 19) keeps its native convolutions."""
        first: nn.Conv1d = self.conv_layers[0].conv
        if first.in_channels != 1:
            raise ValueError("the first conv layer must read one channel (raw audio)")
        self.register_buffer(
            "first_conv_weight", first.weight.detach().reshape(first.out_channels, -1).t().contiguous()
        )
        self.register_buffer("first_conv_bias", None if first.bias is None else first.bias.detach().clone())
        if self.stacked_positional_conv:
            return
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
        projected = self.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected  # HuBERT's returns one tensor
        keep = frame_valid.unsqueeze(-1).to(hidden.dtype)
        hidden = hidden * keep
        hidden = hidden + self._positional(hidden, keep)
        if not self.stable_layer_norm:
            hidden = self.encoder.layer_norm(hidden)
        layer_outputs = self._layers(hidden, frame_valid)
        if self.layer_weights is not None:
            # transformers 5's hidden states are the layers' outputs as they left them: a stable-layer-norm
            # encoder's final norm is in last_hidden_state only (the export's parity check pins this).
            weights = nn.functional.softmax(self.layer_weights, dim=-1).to(hidden.dtype)
            hidden = (torch.stack(layer_outputs, dim=1) * weights.view(-1, 1, 1)).sum(dim=1)
        elif self.stable_layer_norm:
            hidden = self.encoder.layer_norm(layer_outputs[-1])
        else:
            hidden = layer_outputs[-1]

        projected = self.projector(hidden).float()
        valid = frame_valid.unsqueeze(-1).to(projected.dtype)
        pooled = (projected * valid).sum(dim=1) / valid.sum(dim=1)
        logits = self.classifier(pooled.to(self.weight_dtype)).float()
        return logits, nn.functional.softmax(logits, dim=-1), pooled

    def _layers(self, hidden: Tensor, frame_valid: Tensor) -> list[Tensor]:
        """The transformer layers' input and each layer's output (Hugging Face's hidden states)."""
        outputs = [hidden]
        if self.relative_position_bias:
            # WavLM: the bias of the padded length, then the key-padding mask its attention takes (True: keep).
            attention = self.encoder.layers[0].attention
            buckets = attention._relative_positions_bucket(relative_positions(hidden))
            bias = attention.rel_attn_embed(buckets).permute(2, 0, 1)
            heads, steps = bias.shape[0], bias.shape[1]
            position_bias = bias.unsqueeze(0).expand(hidden.shape[0], heads, steps, steps).reshape(-1, steps, steps)
            for index, layer in enumerate(self.encoder.layers):
                extra = {} if self.stable_layer_norm else {"index": index}
                hidden, position_bias = layer(hidden, attention_mask=frame_valid, position_bias=position_bias, **extra)
                outputs.append(hidden)
            return outputs
        additive_mask = (~frame_valid).to(hidden.dtype)[:, None, None, :] * torch.finfo(hidden.dtype).min
        for layer in self.encoder.layers:
            hidden = layer(hidden, attention_mask=additive_mask)
            outputs.append(hidden)
        return outputs

    def _positional(self, hidden: Tensor, keep: Tensor) -> Tensor:
        """The positional conv embedding of `hidden` [batch, frames, channels], whose padded frames are zero.

        Every conv must see zeros past a clip's end, as its own zero padding is when the clip is alone:
        HuBERT's optional batch norm before the conv, and each of data2vec-audio's stacked layers
        (layer norm, activation), make the padding non-zero again, so it is zeroed after them."""
        embed = self.encoder.pos_conv_embed
        if self.stacked_positional_conv:
            frames, keep_frames = hidden.transpose(1, 2), keep.transpose(1, 2)
            for layer in embed.layers:
                frames = layer(frames) * keep_frames
            stacked: Tensor = frames.transpose(1, 2)
            return stacked
        if getattr(embed, "batch_norm", None) is not None:
            hidden = embed.batch_norm(hidden.transpose(1, 2)).transpose(1, 2) * keep
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
        conv: nn.Conv1d = self.conv_layers[0].conv
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
                norm: nn.GroupNorm = conv_layer.layer_norm
                normed = clip_group_norm(hidden, valid_frames, norm.weight, norm.bias, float(norm.eps))
                hidden = conv_layer.activation(normed.to(hidden.dtype))
            else:
                hidden = conv_layer(hidden.unsqueeze(1) if index == 0 else hidden)
        return hidden.transpose(1, 2)
