"""Python client for the speech emotion recognition ensemble served by NVIDIA Triton.

Only the public surface is exported here; ``emotion_client.audio`` and ``emotion_client.codec``
stay importable for callers (and an async twin) that need the lower-level pieces.
"""

from .client import EmotionClient
from .errors import (
    EmotionClientError,
    IncompatibleModelError,
    InvalidAudioError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    TransportError,
)
from .results import Classification, LabelScore, ModelInfo

__all__ = [
    "Classification",
    "EmotionClient",
    "EmotionClientError",
    "IncompatibleModelError",
    "InvalidAudioError",
    "LabelScore",
    "ModelInfo",
    "ModelNotReadyError",
    "RequestTimeoutError",
    "ServerError",
    "ServerUnavailableError",
    "TransportError",
]
