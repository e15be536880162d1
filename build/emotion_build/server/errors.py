"""The errors the server modules raise, under one root so that a caller can catch any server failure."""

from __future__ import annotations

__all__ = ["HOW_TO_BUILD", "ServerError", "ServerStartError", "StubEnvironmentError", "TritonNotFoundError"]

HOW_TO_BUILD = "`make libtorch-backend` (in a checkout) or `python -m emotion_build build-backend`"
"""How to get Triton's libtorch backend, in every message that finds it missing or stale."""


class ServerError(RuntimeError):
    """Root of every error this module raises about the server itself."""


class TritonNotFoundError(ServerError):
    """The wheel, its binary or the stub for this Python is missing; the message says what to install."""


class StubEnvironmentError(ServerError):
    """This environment has a package the Python-backend stub cannot work with; the message says which."""


class ServerStartError(ServerError):
    """tritonserver exited or never became ready; the server has already been stopped."""

    def __init__(self, message: str, *, exit_code: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        """The server's exit status (negative: killed by that signal); None if we never saw it exit."""
        self.log_tail = log_tail
        """The last lines of the server's output, or "" when its output went to our stderr."""
