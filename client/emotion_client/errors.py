"""The SDK's one exception hierarchy and the one place tritonclient errors are translated.

Callers catch ``EmotionClientError`` (or a branch of it) and never need to import tritonclient:
every ``InferenceServerException`` is mapped here, by its gRPC status code rather than by its
message text, and re-raised with the original kept as ``__cause__``.

::

    EmotionClientError
    ├── InvalidAudioError            (bad input, caught locally or by the server)
    ├── IncompatibleModelError       (the model is not an emotion ensemble)
    ├── TransportError               (no answer: worth retrying)
    │   ├── ServerUnavailableError
    │   └── RequestTimeoutError
    └── ServerError                  (the server answered with an error)
        └── ModelNotReadyError
"""

from __future__ import annotations

from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "EmotionClientError",
    "IncompatibleModelError",
    "InvalidAudioError",
    "ModelNotReadyError",
    "RequestTimeoutError",
    "ServerError",
    "ServerUnavailableError",
    "TransportError",
    "from_triton_error",
    "is_ambiguous_unavailable",
]

# gRPC status codes as tritonclient renders them in ``InferenceServerException.status()``.
_UNAVAILABLE = "StatusCode.UNAVAILABLE"
_DEADLINE_EXCEEDED = "StatusCode.DEADLINE_EXCEEDED"
_INVALID_ARGUMENT = "StatusCode.INVALID_ARGUMENT"
_NOT_FOUND = "StatusCode.NOT_FOUND"
_CANCELLED = "StatusCode.CANCELLED"


class EmotionClientError(Exception):
    """Root of every error this SDK raises, so one ``except`` clause covers them all."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        """Human-readable explanation, including what to do next where we know it."""
        self.status = status
        """gRPC status code string (``"StatusCode.UNAVAILABLE"``), or ``None`` if raised locally."""


class InvalidAudioError(EmotionClientError, ValueError):
    """The audio cannot be classified as given; retrying the same input will fail again.

    Also a ``ValueError`` so generic input-validation handlers keep working.
    """


class IncompatibleModelError(EmotionClientError):
    """The named model lacks the parameters that describe an emotion ensemble.

    Usually a wrong ``model_name`` or a model repository from another release.
    """


class TransportError(EmotionClientError):
    """No usable answer came back; the request may succeed if retried later."""


class ServerUnavailableError(TransportError):
    """The server could not be reached (down, wrong URL, network failure)."""


class RequestTimeoutError(TransportError):
    """The call exceeded its deadline; the server may still have processed it."""


class ServerError(EmotionClientError):
    """The server answered, but with an error this SDK has no more specific class for."""


class ModelNotReadyError(ServerError):
    """The server is up but the model is unknown, still loading, or unloaded."""


def is_ambiguous_unavailable(error: InferenceServerException) -> bool:
    """Whether mapping ``error`` precisely needs to know if the server is live (see below)."""
    return bool(error.status() == _UNAVAILABLE)


def from_triton_error(
    error: InferenceServerException,
    *,
    model_name: str,
    server_live: bool | None = None,
) -> EmotionClientError:
    """Translate a tritonclient exception into this SDK's hierarchy.

    Pure, so it is tested without a server. Triton reports both "cannot connect" and "model has
    no available versions" as ``UNAVAILABLE``; the status code alone cannot tell them apart, so a
    caller that has probed liveness passes ``server_live=True`` to get ``ModelNotReadyError``.
    """
    status = error.status()
    detail = error.message() or str(error)
    if status == _DEADLINE_EXCEEDED:
        return RequestTimeoutError(f"request to model '{model_name}' timed out: {detail}", status=status)
    if status == _UNAVAILABLE:
        if server_live:
            return ModelNotReadyError(f"model '{model_name}' is not ready: {detail}", status=status)
        return ServerUnavailableError(f"Triton server is unavailable: {detail}", status=status)
    if status == _CANCELLED:
        return TransportError(f"request to model '{model_name}' was cancelled: {detail}", status=status)
    if status == _NOT_FOUND:
        return ModelNotReadyError(
            f"model '{model_name}' is not loaded on the server (check model_name): {detail}",
            status=status,
        )
    if status == _INVALID_ARGUMENT:
        return InvalidAudioError(f"server rejected the audio: {detail}", status=status)
    if status is None:
        # tritonclient raises status-less exceptions for failures on the client side.
        return EmotionClientError(f"tritonclient error: {detail}")
    return ServerError(f"server error from model '{model_name}': {detail}", status=status)
