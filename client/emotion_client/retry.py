"""Retry policy shared by both clients: which failures to retry and how long to wait before each.

Pure functions, so the policy is tested without a server and the sync and async twins cannot
disagree; the twins only sleep (``time.sleep`` or ``asyncio.sleep``) for the delay chosen here.

Only gRPC ``UNAVAILABLE`` is retried: the request never reached a model, so sending it again is
safe and often succeeds on a restarted server or another replica. A timeout is not retried (the
server may still be working on it and the caller's deadline is spent), nor are the ``UNAVAILABLE``
answers that retrying cannot fix (a refused auth header, a failed TLS handshake). Classifying a
clip has no side effects, so every call this SDK makes is idempotent and safe to resend.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ._defaults import DEFAULT_BACKOFF_BASE_S, DEFAULT_BACKOFF_MAX_S, DEFAULT_MAX_RETRIES
from .errors import AuthenticationError, EmotionClientError, TLSError

__all__ = ["RetryPolicy", "backoff_delay_s", "is_retryable", "should_retry"]

_UNAVAILABLE = "StatusCode.UNAVAILABLE"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a client resends a call that failed with ``UNAVAILABLE``.

    ``RetryPolicy(max_retries=0)`` turns retries off.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    """Extra attempts after the first one; each goes to the next endpoint when there are several."""
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    """Upper bound of the first delay; the bound doubles with every further retry."""
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    """Cap on the bound, so long retry chains do not wait minutes."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        for name in ("backoff_base_s", "backoff_max_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s:g}) is below backoff_base_s ({self.backoff_base_s:g})"
            )


def is_retryable(error: EmotionClientError) -> bool:
    """Whether ``error`` is an ``UNAVAILABLE`` failure that resending (elsewhere, later) can fix."""
    if isinstance(error, (AuthenticationError, TLSError)):
        return False
    return error.status == _UNAVAILABLE


def should_retry(error: EmotionClientError, *, attempt: int, policy: RetryPolicy) -> bool:
    """Whether to send the call again after ``error`` ended attempt number ``attempt`` (0 = first).

    True only for retryable failures (``is_retryable``), and only while retries remain.
    """
    return attempt < policy.max_retries and is_retryable(error)


def backoff_delay_s(
    attempt: int,
    *,
    policy: RetryPolicy,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait before retry number ``attempt + 1``: exponential backoff with full jitter.

    The delay is drawn uniformly from ``[0, min(backoff_max_s, backoff_base_s * 2**attempt)]``
    (AWS's "full jitter"), so clients that failed together do not retry together. ``uniform``
    is injectable for tests.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    # min() before the power would still overflow for huge attempts; cap the exponent instead.
    bound = min(policy.backoff_max_s, policy.backoff_base_s * 2.0 ** min(attempt, 64))
    return float(uniform(0.0, bound))
