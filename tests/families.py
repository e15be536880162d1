"""Tiny random checkpoints of every served family and layout, saved the Hugging Face way."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from transformers import Wav2Vec2FeatureExtractor

from emotion_build.model.families import FamilyName, Layout, random_config
from emotion_build.model.loading import SUPERB_LABELS, random_checkpoint

SEVEN_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust")


@dataclasses.dataclass(frozen=True)
class Variant:
    family: FamilyName
    layout: Layout
    class_name: str
    weighted_layer_sum: bool = True
    labels: tuple[str, ...] = SUPERB_LABELS
    extra: tuple[tuple[str, Any], ...] = ()
    """Further config settings, e.g. HuBERT base's feature projection without a layer norm."""


VARIANTS: dict[str, Variant] = {
    "wav2vec2-large": Variant("wav2vec2", "stable", "Wav2Vec2ForSequenceClassification"),
    "hubert-base": Variant(
        "hubert",
        "base",
        "HubertForSequenceClassification",
        weighted_layer_sum=False,
        extra=(("feat_proj_layer_norm", False),),
    ),
    "hubert-large": Variant("hubert", "stable", "HubertForSequenceClassification"),
    "wavlm-base": Variant("wavlm", "base", "WavLMForSequenceClassification", labels=SEVEN_LABELS),
    "wavlm-large": Variant("wavlm", "stable", "WavLMForSequenceClassification", weighted_layer_sum=False),
    "data2vec-audio": Variant("data2vec-audio", "base", "Data2VecAudioForSequenceClassification"),
}
"""wav2vec2 base (group norm) is the conftest's tiny checkpoint, served by every other test module."""


def save_checkpoint(variant: Variant, directory: Path, *, seed: int = 3) -> Path:
    """Model and feature extractor (`return_attention_mask=True`, as the large models ship) via save_pretrained."""
    config = random_config(
        variant.family,
        "tiny",
        layout=variant.layout,
        labels=variant.labels,
        weighted_layer_sum=variant.weighted_layer_sum,
    )
    for key, value in variant.extra:
        setattr(config, key, value)
    loaded = random_checkpoint(config, seed=seed, source=str(directory))
    loaded.model.save_pretrained(directory)
    extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    extractor.save_pretrained(directory)
    return directory
