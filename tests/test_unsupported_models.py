"""What export refuses, and how: one line naming the class found and the supported families,
before any weights load; and a parity failure that names what is non-finite instead of "nan"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from repositories import refused_export
from transformers import (
    HubertConfig,
    HubertForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2ConformerConfig,
    Wav2Vec2ConformerForSequenceClassification,
    Wav2Vec2Model,
)

from emotion_build.export.pipeline import ExportError, describe, export
from emotion_build.model.families import FAMILIES, UnsupportedModelError
from emotion_build.model.loading import load_pretrained, random_model
from emotion_build.repository.description import BatchingSettings

TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
SUPPORTED_CLASSES = [family.class_name for family in FAMILIES.values()]


def saved(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)  # type: ignore[operator]
    return directory


def test_another_architecture_fails_the_export_cli_with_one_line(tmp_path: Path) -> None:
    checkpoint = saved(
        Wav2Vec2ConformerForSequenceClassification(Wav2Vec2ConformerConfig(**TINY | {"num_labels": 4})),
        tmp_path / "ckpt",
    )
    line = refused_export(tmp_path / "out", "--target", "cpu", "--model", str(checkpoint), timeout_s=300)
    assert "Wav2Vec2ConformerForSequenceClassification" in line
    assert all(name in line for name in SUPPORTED_CLASSES)


@pytest.mark.parametrize("head", ["regression", "one label", "no classifier"])
def test_heads_that_are_not_a_softmax_classifier_are_refused_in_one_line(tmp_path: Path, head: str) -> None:
    if head == "no classifier":
        model: torch.nn.Module = Wav2Vec2Model(Wav2Vec2Config(**TINY))
        found = "Wav2Vec2Model"
    else:
        config = HubertConfig(**TINY | {"num_labels": 4 if head == "regression" else 1})
        config.problem_type = "regression" if head == "regression" else None
        model = HubertForSequenceClassification(config)
        found = "HubertForSequenceClassification"
    with pytest.raises(UnsupportedModelError) as caught:
        load_pretrained(str(saved(model, tmp_path / "ckpt")))
    message = str(caught.value)
    assert "\n" not in message and found in message
    assert all(name in message for name in SUPPORTED_CLASSES)
    if head != "no classifier":
        assert ("regression" if head == "regression" else "1 label") in message


def test_a_non_finite_parity_failure_says_what_is_non_finite_and_where(tmp_path: Path) -> None:
    loaded = random_model("tiny", seed=2, family="wavlm")
    with torch.no_grad():
        loaded.model.classifier.bias[1] = float("nan")  # the checkpoint itself is broken
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
    with pytest.raises(ExportError) as caught:
        export(
            loaded, tmp_path / "out", "cpu", description, dtype="fp32", progress=lambda _: None, engine="torchscript"
        )
    message = str(caught.value)
    assert "eager Hugging Face model (the checkpoint itself) gives non-finite logits for the clips of" in message
    assert "TorchScript" not in message  # its guard answers a non-finite row with zeros, which are finite
    assert "nan" not in message.lower().replace("non-finite", "")
    assert not (tmp_path / "out").exists()
