"""Live streams, shared by the sync and async clients: everything about a stream that is not I/O.

A stream is a Triton sequence on the server's `stream` model (docs/streaming.md): the client sends
only new audio, at the model's rate, in pieces of at least `SEND_MIN_S` (a source that hands over
one sample at a time costs no request per sample) and at most `SEND_MAX_S`; the server answers each
completed window with an update, and the END request with a `done` response. `StreamSession` turns
a caller's chunks (any size, float or integer PCM, any rate) into those pieces and the server's
responses into `StreamUpdate`s; the clients only send, receive and wait.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from tritonclient.grpc import InferInput  # type: ignore[import-untyped, unused-ignore]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped, unused-ignore]

from ._defaults import MIN_HOP_S
from .audio import check_sample_rate, chunk_to_float32
from .codec import decode_classification
from .errors import (
    EmotionClientError,
    IncompatibleModelError,
    InvalidAudioError,
    ServerError,
    StreamExpiredError,
    StreamInterruptedError,
    StreamRefusedError,
    from_triton_error,
)
from .results import ModelInfo, StreamUpdate

__all__ = ["SEND_MAX_S", "SEND_MIN_S", "StreamInfo", "StreamSession", "stream_error"]

SEND_MIN_S = 0.05
"""Audio the client gathers before it sends: 50 ms of latency at most, never a request per sample."""
SEND_MAX_S = 10.0
"""The longest piece sent at once; longer chunks are split."""
_EXPIRED_MARKERS = ("is unknown: it ended", "must specify the START flag")
"""The stream model's refusal of a stream it no longer has, and Triton's of a sequence it timed out."""
_REFUSED_MARKER = "live streams and all are in use"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StreamInfo:
    """What the server's stream model says of itself (its config), for clients and load tests."""

    model_name: str
    chunk_input: str
    """The name of the input the new samples go in."""
    labels: tuple[str, ...]
    max_streams: int
    """Live streams the server holds at once."""
    idle_timeout_s: float
    """A stream silent this long is forgotten."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, model_name: str) -> StreamInfo:
        body = config.get("config", config)
        params = body.get("parameters", {}) if isinstance(body, Mapping) else {}

        def param(key: str) -> str:
            entry = params.get(key)
            value = entry.get("string_value") if isinstance(entry, Mapping) else None
            if not isinstance(value, str):
                raise IncompatibleModelError(
                    f"model '{model_name}' is not an emotion stream model: missing parameter '{key}'; "
                    "export the repository with a current emotion-build"
                )
            return value

        return cls(
            model_name=model_name,
            chunk_input=str(body["input"][0]["name"]),
            labels=tuple(json.loads(param("labels"))),
            max_streams=int(param("max_streams")),
            idle_timeout_s=float(param("idle_timeout_s")),
        )


class StreamSession:
    """One stream's chunks in, the pieces to send out; its responses in, updates out."""

    def __init__(
        self, info: ModelInfo, live: StreamInfo, *, sample_rate: int, window_s: float, hop_s: float
    ) -> None:
        for name, value in (("window_s", window_s), ("hop_s", hop_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if hop_s < MIN_HOP_S:
            raise ValueError(f"hop_s must be at least {MIN_HOP_S:g} s, got {hop_s:g}")
        if hop_s > window_s:
            raise ValueError(
                f"hop_s ({hop_s:g}) must not exceed window_s ({window_s:g}), or audio is skipped"
            )
        if not info.min_duration_s <= window_s <= info.max_duration_s:
            raise ValueError(
                f"window_s must lie within the model's limits {info.min_duration_s:g} s to "
                f"{info.max_duration_s:g} s, got {window_s:g}"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise InvalidAudioError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
        check_sample_rate(sample_rate, what="the stream", from_argument=True)
        if live.labels != info.labels:
            raise IncompatibleModelError(
                f"model '{live.model_name}' labels {list(live.labels)} but '{info.model_name}' labels "
                f"{list(info.labels)}: the repository is half exported; export it again"
            )
        self.info, self.live = info, live
        self.window_s, self.hop_s = float(window_s), float(hop_s)
        self.sequence_id = secrets.randbits(63) or 1
        self._resampler = (
            soxr.ResampleStream(sample_rate, info.sample_rate, 1, dtype="float32", quality="HQ")
            if sample_rate != info.sample_rate
            else None
        )
        self._pending: list[npt.NDArray[np.float32]] = []
        self._pending_samples = 0
        self._min = max(1, round(SEND_MIN_S * info.sample_rate))
        self._max = round(SEND_MAX_S * info.sample_rate)
        self.sent = 0
        """Requests sent so far; the first carries START and the stream's window and hop."""

    def feed(self, chunk: Any) -> list[npt.NDArray[np.float32]]:
        """A caller's chunk; the pieces now due to be sent (often none)."""
        samples = chunk_to_float32(chunk, what=f"chunk {self.sent + 1} of the stream")
        if self._resampler is not None and samples.size:
            samples = np.asarray(self._resampler.resample_chunk(samples, last=False), dtype=np.float32)
        self._pending.append(samples)
        self._pending_samples += samples.size
        if self._pending_samples < self._min:
            return []
        return self._drain()

    def finish(self) -> list[npt.NDArray[np.float32]]:
        """What is left to send, the last piece with END (one piece at least, possibly empty)."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._pending.append(np.asarray(tail, dtype=np.float32))
        return self._drain() or [np.zeros(0, np.float32)]

    def _drain(self) -> list[npt.NDArray[np.float32]]:
        joined = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._pending_samples = [], 0
        return [joined[i : i + self._max] for i in range(0, joined.size, self._max)] or []

    def request(self, samples: npt.NDArray[np.float32], *, end: bool) -> dict[str, Any]:
        """The arguments of one stream request (tritonclient's stream_infer/async_stream_infer)."""
        tensor = InferInput(self.live.chunk_input, [1, samples.size], "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(samples, dtype=np.float32)[None, :])
        start = self.sent == 0
        self.sent += 1
        return {
            "model_name": self.live.model_name,
            "inputs": [tensor],
            "request_id": str(self.sent),
            "sequence_id": self.sequence_id,
            "sequence_start": start,
            "sequence_end": end,
            "parameters": {"window_s": self.window_s, "hop_s": self.hop_s} if start else None,
        }

    def decode(self, result: Any) -> StreamUpdate | None:
        """An update, or None for the `done` response that follows the last one."""
        done = result.as_numpy("done")
        if done is not None and bool(np.asarray(done).reshape(-1)[0]):
            return None
        start, end = result.as_numpy("start_s"), result.as_numpy("end_s")
        if start is None or end is None:
            raise ServerError(f"model '{self.live.model_name}' sent an update without its window")
        classification = decode_classification(result.as_numpy(self.info.probabilities_output), self.info)
        return StreamUpdate(
            start_s=float(np.asarray(start).reshape(-1)[0]),
            end_s=float(np.asarray(end).reshape(-1)[0]),
            classification=classification,
        )


def stream_error(error: InferenceServerException, live: StreamInfo, *, updates: int) -> EmotionClientError:
    """A failure inside a stream as the typed error a caller handles. The stream model's refusals come
    back without a status, only their message, so they are told apart by it."""
    message = str(error.message() or error)
    if any(marker in message for marker in _EXPIRED_MARKERS):
        return StreamExpiredError(
            f"the stream was idle longer than the server's timeout of {live.idle_timeout_s:g} s (or had "
            f"ended) and the server forgot it after {updates} update(s); start a new stream ({message})"
        )
    if _REFUSED_MARKER in message:
        return StreamRefusedError(f"stream refused: {message}")
    if error.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"):
        return StreamInterruptedError(
            f"the stream was cut after {updates} update(s): the server went away or restarted; start a new "
            f"stream ({message})",
            status=error.status(),
        )
    if error.status() is None:
        if message.startswith("stream failed"):
            return ServerError(f"model '{live.model_name}': {message}")
        return InvalidAudioError(f"the stream's audio was refused: {message}")
    return from_triton_error(error, model_name=live.model_name)
