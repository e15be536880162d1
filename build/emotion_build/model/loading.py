"""Getting an audio emotion classifier (families.py) and its feature-extractor settings into memory.

Real weights come through the normal Hugging Face loading code (hub id or local directory), with
the class the checkpoint's config names; anything export cannot serve is refused from the config,
before any weights load. Random-weight models of the exact architectures exist so that everything
else (tracing, serving, benchmarks) can be exercised on machines that cannot download the weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForAudioClassification, Wav2Vec2FeatureExtractor

from .families import AudioClassifier, UnsupportedModelError, check_supported, random_config
from .names import DEFAULT_MODEL, UNTRAINED_BANNER, FamilyName

__all__ = [
    "DEFAULT_MODEL",
    "SUPERB_LABELS",
    "UNTRAINED_BANNER",
    "LoadedModel",
    "ModelUnavailableError",
    "RandomSize",
    "load_pretrained",
    "random_checkpoint",
    "random_model",
]

SUPERB_LABELS = ("neu", "hap", "ang", "sad")
"""Only used to give random-weight stand-ins the real model's label set; served labels are read from id2label."""


RandomSize = Literal["tiny", "base", "large"]


class ModelUnavailableError(RuntimeError):
    """The model could not be loaded; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: AudioClassifier
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
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
        check_supported(config)
        feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(name_or_path, local_files_only=local_only)
        model = AutoModelForAudioClassification.from_pretrained(
            name_or_path, attn_implementation="eager", local_files_only=local_only
        )
    except UnsupportedModelError:
        raise
    except (OSError, ValueError) as error:
        where = (
            "not a model directory"
            if Path(name_or_path).is_dir()
            else ("the Hugging Face Hub is unreachable and it is not cached" if local_only else _root_cause(error))
        )
        raise ModelUnavailableError(f"cannot load model {name_or_path!r}: {where}; {hint}") from error
    return LoadedModel(_prepared(model), feature_extractor, name_or_path, untrained=False)


def random_model(size: RandomSize, *, seed: int = 0, family: FamilyName = "wav2vec2") -> LoadedModel:
    """A family's exact classifier architecture at `size` (families.random_config) with random weights.

    base and large are the published sizes (large in the stable-layer-norm layout of wav2vec2-large,
    XLSR-53, HuBERT-large and WavLM-large); tiny is a scaled-down twin of the base layout."""
    if size not in ("tiny", "base", "large"):
        raise ValueError(f"random-init size must be 'tiny', 'base' or 'large', got {size!r}")
    config = random_config(family, size, labels=SUPERB_LABELS)
    return random_checkpoint(config, seed=seed, source=f"random-init:{size}:{family}:seed={seed}")


def random_checkpoint(config: Any, *, seed: int, source: str) -> LoadedModel:
    """The classifier `config` describes (families.random_config) with random weights, and a
    normalising 16 kHz feature extractor."""
    torch.manual_seed(seed)
    model: AudioClassifier = AutoModelForAudioClassification.from_config(  # type: ignore[no-untyped-call]
        config, attn_implementation="eager"
    )
    with torch.no_grad():
        # HF's init gives uniform layer weights and near-zero logits, under which a wrong layer order or
        # a pooling slip barely moves the probabilities; spread-out values make the parity checks bite.
        if config.use_weighted_layer_sum:
            model.layer_weights.copy_(torch.randn_like(model.layer_weights))
        model.classifier.weight.normal_(0.0, 1.0)
    feature_extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    )
    return LoadedModel(_prepared(model), feature_extractor, source, untrained=True)


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    """One HEAD request to the Hub through huggingface_hub's own HTTP session, so that the proxies it
    would use (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) decide here too; its downloads' own retries take
    about a minute to give up offline. Any answer, whatever its status, means reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    from huggingface_hub import get_session  # huggingface_hub's HTTP client: only here, only when online

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        get_session().head(endpoint, timeout=timeout_s)
    except Exception:  # its HTTP client's errors, whichever library it uses: no answer came
        return False
    return True


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _prepared(model: AudioClassifier) -> AudioClassifier:
    # Tracing the weight-norm parametrisation of the positional conv needs grads off.
    model.eval()  # type: ignore[no-untyped-call]
    return model.requires_grad_(False)
