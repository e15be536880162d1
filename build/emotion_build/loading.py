"""Getting a Wav2Vec2 emotion classifier and its feature-extractor settings into memory.

Real weights come through the normal Hugging Face loading code (hub id or local directory).
Random-weight models of the exact architecture exist so that everything else (tracing, serving,
benchmarks) can be exercised on machines that cannot download the weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

__all__ = [
    "DEFAULT_MODEL",
    "SUPERB_LABELS",
    "LoadedModel",
    "ModelUnavailableError",
    "load_pretrained",
    "random_model",
]

DEFAULT_MODEL = "superb/wav2vec2-base-superb-er"
SUPERB_LABELS = ("neu", "hap", "ang", "sad")
"""Only used to give random-weight stand-ins the real model's label set; served labels are read from id2label."""

RandomSize = Literal["tiny", "base"]


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: Wav2Vec2ForSequenceClassification
    feature_extractor: Wav2Vec2FeatureExtractor
    source: str
    untrained: bool


def load_pretrained(name_or_path: str) -> LoadedModel:
    """Load with `from_pretrained`, turning the many ways a download can fail into one clear line."""
    hint = (
        "pass --model DIR with a local copy (config.json, preprocessor_config.json and weights) "
        "or --random-init base|tiny for an untrained stand-in of the same architecture"
    )
    local_only = Path(name_or_path).is_dir() or not _hub_reachable()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(name_or_path, local_files_only=local_only)
        model = Wav2Vec2ForSequenceClassification.from_pretrained(
            name_or_path, attn_implementation="eager", local_files_only=local_only
        )
    except (OSError, ValueError) as error:
        where = (
            "not a model directory"
            if Path(name_or_path).is_dir()
            else ("the Hugging Face Hub is unreachable and it is not cached" if local_only else _root_cause(error))
        )
        raise ModelUnavailableError(f"cannot load model {name_or_path!r}: {where}; {hint}") from error
    return LoadedModel(_prepared(model), feature_extractor, name_or_path, untrained=False)


def random_model(size: RandomSize, *, seed: int = 0) -> LoadedModel:
    """wav2vec2-base's exact classifier architecture (or a scaled-down twin) with random weights."""
    common: dict[str, Any] = {
        "use_weighted_layer_sum": True,
        "classifier_proj_size": 256,
        "num_labels": len(SUPERB_LABELS),
        "id2label": dict(enumerate(SUPERB_LABELS)),
        "label2id": {label: i for i, label in enumerate(SUPERB_LABELS)},
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
    }
    if size == "base":
        config = Wav2Vec2Config(**common)
    elif size == "tiny":
        config = Wav2Vec2Config(
            **common
            | {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "conv_dim": (32,) * 7,
                "num_conv_pos_embeddings": 16,
                "num_conv_pos_embedding_groups": 4,
                "classifier_proj_size": 16,
            }
        )
    else:
        raise ValueError(f"random-init size must be 'tiny' or 'base', got {size!r}")
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Wav2Vec2ForSequenceClassification(config)
    with torch.no_grad():
        # HF's init gives uniform layer weights and near-zero logits, under which a wrong layer order or
        # a pooling slip barely moves the probabilities; spread-out values make the parity checks bite.
        model.layer_weights.copy_(torch.randn_like(model.layer_weights))
        model.classifier.weight.normal_(0.0, 1.0)
    feature_extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    return LoadedModel(_prepared(model), feature_extractor, f"random-init:{size}:seed={seed}", untrained=True)


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    """A plain TCP probe: the hub client's own retries take about a minute to give up offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    host = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _prepared(model: Wav2Vec2ForSequenceClassification) -> Wav2Vec2ForSequenceClassification:
    # Tracing the weight-norm parametrisation of the positional conv needs grads off.
    model.eval()  # type: ignore[no-untyped-call]
    return model.requires_grad_(False)
