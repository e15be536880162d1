"""The SDK's one exception hierarchy and the one place tritonclient errors are translated.

Callers catch ``EmotionClientError`` (or a branch of it) and never need to import tritonclient:
every ``InferenceServerException`` is mapped here, by its gRPC status code rather than by its
message text, and re-raised with the original kept as ``__cause__``.

::

    EmotionClientError
    ├── InvalidAudioError            (bad input, caught locally or by the server)
    │   └── NoAnswerError            (the model could not compute an answer for this clip)
    ├── IncompatibleModelError       (the model is not an emotion ensemble)
    ├── TransportError               (no usable answer)
    │   ├── ServerUnavailableError   (gRPC UNAVAILABLE: the only status the client retries)
    │   │   ├── ServerBusyError      (the model's queue is full or timed the request out: retried)
    │   │   │   └── StreamRefusedError (a live stream past the server's limit of streams)
    │   │   ├── StreamInterruptedError (a live stream cut: the server went away or restarted)
    │   │   └── TLSError             (handshake or certificate failure: fix the config, not retried)
    │   └── RequestTimeoutError
    └── ServerError                  (the server answered with an error)
        ├── ModelNotReadyError
        ├── StreamExpiredError       (a live stream idle past the server's timeout, forgotten)
        └── AuthenticationError      (missing or wrong credentials/headers, not retried)

Triton and gRPC report a few non-transient failures as ``UNAVAILABLE`` too (a refused restricted
protocol, a failed TLS handshake); those are told apart by the message, since their status alone
would make them look retryable.
"""

from __future__ import annotations

import re

from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "AuthenticationError",
    "EmotionClientError",
    "IncompatibleModelError",
    "InvalidAudioError",
    "ModelNotReadyError",
    "NoAnswerError",
    "RequestTimeoutError",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "StreamExpiredError",
    "StreamInterruptedError",
    "StreamRefusedError",
    "TLSError",
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
_UNAUTHENTICATED = "StatusCode.UNAUTHENTICATED"
_PERMISSION_DENIED = "StatusCode.PERMISSION_DENIED"

_RESTRICTED_PROTOCOL_MARKER = "This protocol is restricted"
"""Start of the message of a request refused by ``--grpc-restricted-protocol`` (sent as UNAVAILABLE)."""
_RESTRICTED_HEADER = re.compile(r"expecting header '([^']+)'")
_OVERLOAD_MARKERS = ("Exceeds maximum queue size", "Request timeout expired")
"""Triton's UNAVAILABLE refusals from a full model queue or one whose queue timeout expired."""
_TLS_MARKERS = ("handshake failed", "CERTIFICATE_VERIFY_FAILED", "SSL_ERROR", "TSI_")
"""How gRPC's transport reports TLS failures inside an UNAVAILABLE status."""
_NO_ANSWER_MARKER = "has no answer for this clip"
"""The Python runner's refusal of a clip its model computed no finite answer for (classifier_model.py)."""
_SOCKET_CLOSED_MARKER = "Socket closed"
"""All a plaintext client sees of a TLS server (and a client without a cert of a mutual-TLS one)."""


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


class NoAnswerError(InvalidAudioError):
    """The model has no answer for this clip: something inside it was not finite (NaN or infinity: an
    fp16 overflow on a GPU, samples no model arithmetic can hold). Every runtime says so for this clip
    alone: the Python runner with an error, the libtorch classifier with its all-zero row, which this
    SDK refuses to read as a label. The same clip fails the same way again; its batch-mates are
    answered as usual.
    """


class IncompatibleModelError(EmotionClientError):
    """The named model lacks the parameters that describe an emotion ensemble.

    Usually a wrong ``model_name`` or a model repository from another release.
    """


class TransportError(EmotionClientError):
    """No usable answer came back; the request may succeed if retried later."""


class ServerUnavailableError(TransportError):
    """The server could not be reached (down, wrong URL, network failure)."""


class ServerBusyError(ServerUnavailableError):
    """The server refused the request because the model's queue was full (or it waited too long in it).

    Retried with backoff like any ``UNAVAILABLE``; if it still fails, send less at once (lower
    ``concurrency``), or give the deployment a larger queue or more replicas.
    """


class TLSError(ServerUnavailableError):
    """The TLS handshake failed: untrusted or mismatched server certificate, or a refused client cert.

    Retrying cannot help; check ``TLSConfig`` (root certificates, client certificate and key).
    """


class StreamRefusedError(ServerBusyError):
    """The server already holds as many live streams as it may; the message names the limit."""


class StreamInterruptedError(ServerUnavailableError):
    """A live stream was cut (the server went away or restarted): its updates so far were delivered;
    a new stream starts over, losing at most the window in progress."""


class RequestTimeoutError(TransportError):
    """The call exceeded its deadline; the server may still have processed it."""


class ServerError(EmotionClientError):
    """The server answered, but with an error this SDK has no more specific class for."""


class ModelNotReadyError(ServerError):
    """The server is up but the model is unknown, still loading, or unloaded."""


class UnknownModelError(ModelNotReadyError):
    """The server holds no model of the name asked for; ``available`` are the emotion models it has."""

    def __init__(self, message: str, *, available: tuple[str, ...] = (), status: str | None = None) -> None:
        super().__init__(message, status=status)
        self.available = available


class ModelControlError(ServerError):
    """The server refused to load or unload a model: it does not take model control requests (start
    it with ``serve --model-control explicit``), or the model's files do not load (the message says)."""


class StreamExpiredError(ServerError):
    """A live stream was silent longer than the server's idle timeout (the message names it), so the
    server forgot it; start a new stream."""


class AuthenticationError(ServerError):
    """The server refused the request's credentials: a missing or wrong auth header or token.

    Raised for gRPC ``UNAUTHENTICATED`` and ``PERMISSION_DENIED`` and for Triton's
    ``--grpc-restricted-protocol`` refusals; the message names the header the server expects.
    """


def is_ambiguous_unavailable(error: InferenceServerException) -> bool:
    """Whether mapping ``error`` precisely needs to know if the server is live (see below)."""
    if error.status() != _UNAVAILABLE:
        return False
    detail = _detail(error)
    return not (_RESTRICTED_PROTOCOL_MARKER in detail or _is_tls_failure(detail) or _is_overload(detail))


def from_triton_error(
    error: InferenceServerException,
    *,
    model_name: str,
    server_live: bool | None = None,
    url: str | None = None,
) -> EmotionClientError:
    """Translate a tritonclient exception into this SDK's hierarchy.

    Pure, so it is tested without a server. Triton reports both "cannot connect" and "model has
    no available versions" as ``UNAVAILABLE``; the status code alone cannot tell them apart, so a
    caller that has probed liveness passes ``server_live=True`` to get ``ModelNotReadyError``.
    ``url`` names the endpoint in the message, which matters when a client spreads over several.
    """
    status = error.status()
    detail = _detail(error)
    server = f"Triton server at {url}" if url else "Triton server"
    if status == _DEADLINE_EXCEEDED:
        where = f" at {url}" if url else ""
        return RequestTimeoutError(
            f"request to model '{model_name}'{where} timed out: {detail}; "
            "raise timeout_s if the server is slow",
            status=status,
        )
    if status == _UNAVAILABLE and _RESTRICTED_PROTOCOL_MARKER in detail:
        return AuthenticationError(_restricted_message(server, detail), status=status)
    if status in (_UNAUTHENTICATED, _PERMISSION_DENIED):
        return AuthenticationError(f"{server} refused the request's credentials: {detail}", status=status)
    if status == _UNAVAILABLE:
        if _is_tls_failure(detail):
            return TLSError(
                f"TLS handshake with {server} failed: {detail}; check TLSConfig (root_certificates must "
                "hold the CA that signed the server certificate, whose name must match the URL's host)",
                status=status,
            )
        if _is_overload(detail):
            return ServerBusyError(
                f"{server} is too busy for model '{model_name}': {detail}; "
                "send fewer requests at once, or add queue room or replicas",
                status=status,
            )
        if server_live:
            return ModelNotReadyError(f"model '{model_name}' is not ready: {detail}", status=status)
        hint = ""
        if _SOCKET_CLOSED_MARKER in detail:
            hint = (
                "; the server closed the connection, which is what a TLS server does to a plaintext client "
                "(pass tls=...) and a mutual-TLS server to a client without a certificate"
            )
        return ServerUnavailableError(f"{server} is unavailable: {detail}{hint}", status=status)
    if status == _CANCELLED:
        return TransportError(f"request to model '{model_name}' was cancelled: {detail}", status=status)
    if status == _NOT_FOUND:
        return ModelNotReadyError(
            f"model '{model_name}' is not loaded on the server "
            f"(check model_name, or wait for it to load): {detail}",
            status=status,
        )
    if status == _INVALID_ARGUMENT and _NO_ANSWER_MARKER in detail:
        return NoAnswerError(f"model '{model_name}' {_NO_ANSWER_MARKER}: {detail}", status=status)
    if status == _INVALID_ARGUMENT:
        return InvalidAudioError(f"server rejected the audio: {detail}", status=status)
    if status is None:
        # tritonclient raises status-less exceptions for failures on the client side.
        return EmotionClientError(f"tritonclient error: {detail}")
    return ServerError(f"server error from model '{model_name}': {detail}", status=status)


def _detail(error: InferenceServerException) -> str:
    return str(error.message() or str(error))


def _is_overload(detail: str) -> bool:
    return any(marker in detail for marker in _OVERLOAD_MARKERS)


def _is_tls_failure(detail: str) -> bool:
    return any(marker in detail for marker in _TLS_MARKERS)


def _restricted_message(server: str, detail: str) -> str:
    match = _RESTRICTED_HEADER.search(detail)
    if match is None:
        return f"{server} refused the request: {detail}"
    header = match.group(1)
    return (
        f"{server} requires the header '{header}' for this call and the request did not carry the right "
        f"value; pass headers={{'{header}': '<token>'}} (CLI: --header {header}=<token>)"
    )
