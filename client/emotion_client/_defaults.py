"""Defaults in one place so the client, its docs and its tests cannot drift apart."""

from __future__ import annotations

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "LIVENESS_PROBE_TIMEOUT_S",
]

DEFAULT_URL = "localhost:8001"
"""Triton's default gRPC endpoint."""

DEFAULT_MODEL_NAME = "emotion"
"""Name of the ensemble in the project's model repository."""

DEFAULT_TIMEOUT_S = 30.0
"""Per-call deadline; long enough for the longest clip the model accepts on a cold GPU."""

DEFAULT_SAMPLE_RATE = 16000
"""Assumed rate of arrays passed without ``sample_rate``; wav2vec2 checkpoints expect 16 kHz."""

LIVENESS_PROBE_TIMEOUT_S = 2.0
"""Short deadline for the liveness probe that tells "server down" from "model not ready"."""
