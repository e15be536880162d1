"""Python client for the speech emotion recognition ensemble served by NVIDIA Triton.

Only the public surface is exported here; ``emotion_client.audio``, ``emotion_client.codec``,
``emotion_client.connection`` and ``emotion_client.retry`` stay importable for callers that need
the lower-level pieces.
"""

from .aio import AsyncEmotionClient
from .client import EmotionClient
from .connection import TLSConfig
from .errors import (
    AuthenticationError,
    EmotionClientError,
    IncompatibleModelError,
    InvalidAudioError,
    ModelControlError,
    ModelNotReadyError,
    NoAnswerError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    StreamExpiredError,
    StreamInterruptedError,
    StreamRefusedError,
    TLSError,
    TransportError,
    UnknownModelError,
)
from .evaluation import ClassMetrics, EvaluationReport
from .results import (
    BatchItem,
    BatchProgress,
    Classification,
    EndpointHealth,
    LabelScore,
    ModelInfo,
    ProgressCallback,
    ServedModel,
    StreamUpdate,
)
from .retry import RetryPolicy
from .timeline import Segment, Timeline, TrackPoint

__all__ = [
    "AsyncEmotionClient",
    "AuthenticationError",
    "BatchItem",
    "BatchProgress",
    "ClassMetrics",
    "Classification",
    "EmotionClient",
    "EmotionClientError",
    "EndpointHealth",
    "EvaluationReport",
    "IncompatibleModelError",
    "InvalidAudioError",
    "LabelScore",
    "ModelControlError",
    "ModelInfo",
    "ModelNotReadyError",
    "NoAnswerError",
    "ProgressCallback",
    "RequestTimeoutError",
    "RetryPolicy",
    "Segment",
    "ServedModel",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "StreamExpiredError",
    "StreamInterruptedError",
    "StreamRefusedError",
    "StreamUpdate",
    "TLSConfig",
    "TLSError",
    "Timeline",
    "TrackPoint",
    "TransportError",
    "UnknownModelError",
]
