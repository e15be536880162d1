"""Which Hugging Face audio classifiers the export serves, and how to tell them apart.

The four families share one skeleton (a conv feature encoder, a feature projection, a positional
conv, a transformer, projector + mean pooling + linear head), so one ragged module serves them all;
what differs is recorded here once: where the backbone lives, whether the positional conv is a
stack (data2vec-audio), and whether attention carries a relative position bias (WavLM). A
checkpoint of any other class, or one whose head is not a softmax over two or more classes, is
refused before any weights load, in one line that names what was found.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, TypeAlias

from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioForSequenceClassification,
    HubertConfig,
    HubertForSequenceClassification,
    PretrainedConfig,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
    WavLMConfig,
    WavLMForSequenceClassification,
)

from .names import FAMILY_NAMES, FamilyName

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "AudioClassifier",
    "Family",
    "FamilyName",
    "Layout",
    "UnsupportedModelError",
    "backbone",
    "check_supported",
    "family_of",
    "random_config",
]

AudioClassifier: TypeAlias = (
    Wav2Vec2ForSequenceClassification
    | HubertForSequenceClassification
    | WavLMForSequenceClassification
    | Data2VecAudioForSequenceClassification
)
Layout = Literal["base", "stable"]
"""base: group-norm first conv layer, layer norm before the transformer (wav2vec2/HuBERT/WavLM base).
stable: layer-norm conv layers and pre-norm transformer layers (`do_stable_layer_norm`, the large / XLSR models)."""


class UnsupportedModelError(ValueError):
    """The checkpoint is not one of the served families; the message is one line naming what was found."""


@dataclasses.dataclass(frozen=True, slots=True)
class Family:
    name: FamilyName
    class_name: str
    config_class: type[PretrainedConfig]
    model_class: type[Any]
    example: str
    """A public emotion checkpoint of the family (docs/families.md)."""
    stacked_positional_conv: bool = False
    """data2vec-audio: several positional conv layers, each with its own layer norm."""
    relative_position_bias: bool = False
    """WavLM: the first layer computes a bucketed relative position bias that every layer gates."""
    has_stable_layout: bool = True
    """Whether `do_stable_layer_norm` exists (data2vec-audio has layer-norm convs and one encoder layout)."""


FAMILIES: dict[FamilyName, Family] = {
    family.name: family
    for family in (
        Family(
            "wav2vec2",
            "Wav2Vec2ForSequenceClassification",
            Wav2Vec2Config,
            Wav2Vec2ForSequenceClassification,
            "superb/wav2vec2-base-superb-er",
        ),
        Family(
            "hubert",
            "HubertForSequenceClassification",
            HubertConfig,
            HubertForSequenceClassification,
            "superb/hubert-base-superb-er",
        ),
        Family(
            "wavlm",
            "WavLMForSequenceClassification",
            WavLMConfig,
            WavLMForSequenceClassification,
            "a microsoft/wavlm-base-plus emotion fine-tune",
            relative_position_bias=True,
        ),
        Family(
            "data2vec-audio",
            "Data2VecAudioForSequenceClassification",
            Data2VecAudioConfig,
            Data2VecAudioForSequenceClassification,
            "a facebook/data2vec-audio-base emotion fine-tune",
            stacked_positional_conv=True,
            has_stable_layout=False,
        ),
    )
}
_BY_CLASS = {family.class_name: family for family in FAMILIES.values()}
SUPPORTED = ", ".join(_BY_CLASS)


def check_supported(config: PretrainedConfig) -> Family:
    """The family a checkpoint's config names, or UnsupportedModelError (one line) before anything loads.

    The class comes from `architectures` (what save_pretrained wrote): loading a bare encoder or
    a CTC model with AutoModelForAudioClassification would silently add a random classifier head."""
    found = list(getattr(config, "architectures", None) or [])
    named = f"{', '.join(found)} ({config.model_type})" if found else f"no architecture ({config.model_type})"
    family = next((_BY_CLASS[name] for name in found if name in _BY_CLASS), None)
    if family is None:
        raise UnsupportedModelError(
            f"unsupported checkpoint: config.json names {named}; export serves audio classifiers of the classes "
            f"{SUPPORTED}"
        )
    _check_head(family, config)
    return family


def _check_head(family: Family, config: PretrainedConfig) -> None:
    problem = getattr(config, "problem_type", None)
    if int(config.num_labels or 0) < 2 or problem in ("regression", "multi_label_classification"):
        head = problem or f"{config.num_labels} label"
        raise UnsupportedModelError(
            f"unsupported checkpoint: {family.class_name} with a {head} head; export serves single-label "
            f"classifiers (softmax over two or more classes) of the classes {SUPPORTED}"
        )


def family_of(model: AudioClassifier) -> Family:
    """The family of a loaded model, checked the same way as a checkpoint's config."""
    family = _BY_CLASS.get(type(model).__name__)
    if family is None:
        raise UnsupportedModelError(f"unsupported model class {type(model).__name__}; supported: {SUPPORTED}")
    _check_head(family, model.config)
    return family


def backbone(model: AudioClassifier) -> Any:
    """The encoder under the head (`model.wav2vec2`, `.hubert`, `.wavlm`, `.data2vec_audio`)."""
    return getattr(model, model.base_model_prefix)


_TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embeddings": 16,
    # 16 channels per group, as published sizes have at least (base 48, large 64): oneDNN's bf16 grouped
    # convolution on AMX answers garbage below 16 (torch 2.13, docs/serving.md), which would fail every
    # reduced-precision gate of a tiny twin on such a CPU and test nothing.
    "num_conv_pos_embedding_groups": 2,
    "classifier_proj_size": 16,
}
_LARGE: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}
_STABLE: dict[str, Any] = {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True}


def random_config(
    name: FamilyName,
    size: Literal["tiny", "base", "large"],
    *,
    layout: Layout | None = None,
    labels: tuple[str, ...],
    weighted_layer_sum: bool = True,
) -> PretrainedConfig:
    """A family's published architecture at `size` (tiny: a scaled-down twin for tests).

    The layout defaults to the one the size is published in: large wav2vec2, HuBERT and WavLM are
    stable-layer-norm models. data2vec-audio's positional conv is a stack of layers of kernel 19
    (`num_conv_pos_embeddings` counts layers there), which the tiny twin keeps at three."""
    family = FAMILIES[name]
    layout = layout or ("stable" if size == "large" and family.has_stable_layout else "base")
    if layout == "stable" and not family.has_stable_layout:
        raise ValueError(f"{name} has no stable-layer-norm layout")
    settings: dict[str, Any] = {
        "use_weighted_layer_sum": weighted_layer_sum,
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "architectures": [family.class_name],
    }
    if size == "tiny":
        settings |= _TINY | ({"num_conv_pos_embeddings": 3} if family.stacked_positional_conv else {})
    elif size == "large":
        settings |= _LARGE
    if family.has_stable_layout:
        settings |= _STABLE if layout == "stable" else {"feat_extract_norm": "group", "do_stable_layer_norm": False}
    config: PretrainedConfig = family.config_class(**settings)
    config._attn_implementation = "eager"
    return config
