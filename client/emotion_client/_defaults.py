"""Defaults in one place so the client, its docs and its tests cannot drift apart."""

from __future__ import annotations

__all__ = [
    "AUDIO_FILE_SUFFIXES",
    "DEFAULT_BACKOFF_BASE_S",
    "DEFAULT_BACKOFF_MAX_S",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_HOP_S",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL_NAME",
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_SMOOTH_S",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "DEFAULT_WINDOW_S",
    "ENDPOINT_COOLDOWN_S",
    "LIVENESS_PROBE_TIMEOUT_S",
    "MAX_CHANNELS",
    "MAX_GRPC_MESSAGE_BYTES",
    "MAX_SAMPLE_RATE_HZ",
    "MIN_HOP_S",
    "MIN_SAMPLE_RATE_HZ",
    "READY_POLL_INTERVAL_S",
    "READY_POLL_MAX_INTERVAL_S",
    "URL_ENV_VAR",
]

DEFAULT_URL = "localhost:8001"
"""Triton's default gRPC endpoint."""

URL_ENV_VAR = "EMOTION_CLIENT_URL"
"""Environment variable the CLI reads its default ``--url`` from."""

DEFAULT_MODEL_NAME = "emotion"
"""Name of the ensemble in the project's model repository."""

DEFAULT_TIMEOUT_S = 30.0
"""Per-attempt deadline; long enough for the longest clip the model accepts on a cold GPU."""

DEFAULT_SAMPLE_RATE = 16000
"""Assumed rate of arrays passed without ``sample_rate``; wav2vec2 checkpoints expect 16 kHz."""

LIVENESS_PROBE_TIMEOUT_S = 2.0
"""Short deadline for the liveness probe that tells "server down" from "model not ready"."""

DEFAULT_MAX_RETRIES = 2
"""Extra attempts after a call fails with gRPC UNAVAILABLE (0 disables retries)."""

DEFAULT_BACKOFF_BASE_S = 0.1
"""Upper bound of the first retry's delay; it doubles on each further retry (full jitter)."""

DEFAULT_BACKOFF_MAX_S = 2.0
"""Cap on the upper bound of any single retry delay."""

ENDPOINT_COOLDOWN_S = 2.0
"""How long an endpoint that answered UNAVAILABLE is skipped by round-robin (with several endpoints)."""

DEFAULT_CONCURRENCY = 8
"""Requests ``classify_many`` keeps in flight; enough to let Triton's dynamic batcher fill batches."""

DEFAULT_WINDOW_S = 4.0
"""Timeline window: about one utterance, the length SUPERB's emotion model was trained on."""

DEFAULT_HOP_S = 2.0
"""Timeline hop: half a window, so every moment is judged twice, with context on each side."""

MIN_HOP_S = 0.25
"""The shortest hop a live stream may ask for (the server refuses less): four updates a second."""

DEFAULT_SMOOTH_S = 3.0
"""Width of the centred moving average over the per-second track."""

READY_POLL_INTERVAL_S = 0.1
"""First pause between readiness probes in ``wait_until_ready``; doubles up to the maximum below."""

READY_POLL_MAX_INTERVAL_S = 1.0
"""Longest pause between readiness probes in ``wait_until_ready``."""

MAX_GRPC_MESSAGE_BYTES = 2**31 - 1
"""gRPC message size limit both ways, as tritonclient sets it: long clips must not hit the 4 MiB default."""

AUDIO_FILE_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"}
)
"""File endings the CLI picks up when it walks a directory (files named explicitly are always read)."""

MIN_SAMPLE_RATE_HZ = 1000
"""Lowest sample rate accepted for a file or array; below it the input is not a recording."""

MAX_SAMPLE_RATE_HZ = 768_000
"""Highest sample rate accepted (the top of what audio interfaces record)."""

MAX_CHANNELS = 32
"""Most channels downmixed into the mono clip the model hears."""
