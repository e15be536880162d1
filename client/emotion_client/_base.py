"""Everything the sync and async clients share that is not I/O.

Configuration and its validation, endpoint round-robin, error mapping, the retry decision and
the bookkeeping of ``classify_many`` live here once; ``EmotionClient`` and ``AsyncEmotionClient``
only send requests and sleep, each in its own way.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped, unused-ignore]

from . import codec
from ._defaults import ENDPOINT_COOLDOWN_S
from .audio import AudioSource
from .connection import TLSConfig, channel_args, normalize_headers, parse_urls, tls_client_kwargs
from .errors import (
    EmotionClientError,
    ModelNotReadyError,
    ServerBusyError,
    ServerUnavailableError,
    from_triton_error,
    is_ambiguous_unavailable,
)
from .results import BatchItem, BatchProgress, Classification, EndpointHealth, ModelInfo, ProgressCallback
from .retry import RetryPolicy, backoff_delay_s, is_retryable, should_retry
from .timeline import Timeline, Window, build_timeline, iter_windows

__all__ = ["BatchCollector", "ClientCore", "Fail", "Retry", "TimelineRun", "validate_concurrency"]

_LOGGER = logging.getLogger("emotion_client")


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """Send again after sleeping this long (the twins sleep each in their own way)."""

    delay_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Fail:
    """Raise `error`; where gRPC's status cannot tell "server down" from "model not loaded", after asking
    the server whether it is live (ClientCore.map_error's server_live)."""

    error: EmotionClientError
    probe_liveness: bool = False


class ClientCore:
    """The validated settings of one client and the decisions made from them."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        model_name: str,
        model_version: str,
        timeout_s: float,
        retry: RetryPolicy | None,
        headers: Mapping[str, str] | None,
        tls: TLSConfig | bool | None,
        verbose: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        codec.validate_timeout_s(timeout_s)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        if not isinstance(model_version, str):
            raise TypeError(
                f"model_version must be a string ('' lets the server choose), got {model_version!r}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        self.urls = parse_urls(url)
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = float(timeout_s)
        self.retry = retry if retry is not None else RetryPolicy()
        self.headers = normalize_headers(headers)
        self.triton_kwargs: dict[str, Any] = {
            "verbose": verbose,
            "channel_args": channel_args(),
            **tls_client_kwargs(tls),
        }
        self._clock = clock
        self._next = 0
        self._down_until = [0.0] * len(self.urls)
        self._endpoint_lock = threading.Lock()

    def next_endpoint(self) -> int:
        """Index of the endpoint for the next attempt; safe from any thread.

        Round-robin over the endpoints, skipping any that failed with ``UNAVAILABLE`` in the last
        ``ENDPOINT_COOLDOWN_S`` seconds, so a dead replica does not cost every n-th request a
        retry. When every endpoint is cooling down, plain round-robin: one of them may be back.
        """
        with self._endpoint_lock:
            now = self._clock()
            count = len(self.urls)
            for step in range(count):
                candidate = (self._next + step) % count
                if self._down_until[candidate] <= now:
                    break
            else:
                candidate = self._next % count
            self._next = candidate + 1
            return candidate

    def mark_down(self, endpoint: int) -> None:
        """Keep ``endpoint`` out of the rotation for a while after it answered ``UNAVAILABLE``."""
        if len(self.urls) > 1:
            with self._endpoint_lock:
                self._down_until[endpoint] = self._clock() + ENDPOINT_COOLDOWN_S

    def deadline_s(self, timeout_s: float | None) -> float:
        """The deadline of one attempt: the per-call override, else the client's default."""
        codec.validate_timeout_s(timeout_s)
        return self.timeout_s if timeout_s is None else float(timeout_s)

    def map_error(
        self, error: InferenceServerException, endpoint: int, *, server_live: bool | None = None
    ) -> EmotionClientError:
        """Translate a tritonclient failure on ``endpoint`` into this SDK's hierarchy."""
        return from_triton_error(
            error, model_name=self.model_name, server_live=server_live, url=self.urls[endpoint]
        )

    def retry_delay_s(self, error: EmotionClientError, attempt: int, endpoint: int) -> float | None:
        """Seconds to wait before resending after ``error`` ended ``attempt``, or None to give up."""
        if is_retryable(error) and not isinstance(error, ServerBusyError):
            # A busy replica is up: steering all its traffic to the others would only move the queue.
            self.mark_down(endpoint)
        if not should_retry(error, attempt=attempt, policy=self.retry):
            return None
        delay_s = backoff_delay_s(attempt, policy=self.retry)
        _LOGGER.info(
            "attempt %d of %d on %s failed (%s); retrying in %.3f s",
            attempt + 1,
            self.retry.max_retries + 1,
            self.urls[endpoint],
            error.message,
            delay_s,
        )
        return delay_s

    def after_failure(self, raised: BaseException, attempt: int, endpoint: int) -> Retry | Fail:
        """What the twins do after `send` raised `raised` (a tritonclient error, or grpc's ValueError on a
        channel another thread closed) on ``attempt``: wait and send again, or raise."""
        if isinstance(raised, ValueError):
            return Fail(EmotionClientError(f"request failed on the client side: {raised}"))
        assert isinstance(raised, InferenceServerException)
        error = self.map_error(raised, endpoint)
        delay_s = self.retry_delay_s(error, attempt, endpoint)
        if delay_s is not None:
            return Retry(delay_s)
        return Fail(error, probe_liveness=is_ambiguous_unavailable(raised))

    def endpoint_health(
        self,
        endpoint: int,
        live: bool | InferenceServerException,
        ready: bool | InferenceServerException | None,
    ) -> EndpointHealth:
        """An endpoint's health from its probes' answers (`ready` None: not asked, the server not live)."""
        url = self.urls[endpoint]
        if isinstance(live, InferenceServerException):
            return EndpointHealth(
                url=url, live=False, ready=False, error=self.map_error(live, endpoint).message
            )
        if not live:
            return EndpointHealth(url=url, live=False, ready=False, error="server reports it is not live")
        if isinstance(ready, InferenceServerException):
            return EndpointHealth(
                url=url, live=True, ready=False, error=self.map_error(ready, endpoint).message
            )
        error = None if ready else f"model '{self.model_name}' is not loaded or not ready"
        return EndpointHealth(url=url, live=True, ready=bool(ready), error=error)

    def not_ready_error(self, health: Sequence[EndpointHealth], timeout_s: float) -> EmotionClientError:
        """What ``wait_until_ready`` raises when its time is up, naming every endpoint that is not ready."""
        pending = [h for h in health if not h.ready]
        details = "; ".join(f"{h.url}: {h.error or 'not ready'}" for h in pending)
        message = f"model '{self.model_name}' was not ready after {timeout_s:g} s on {details}"
        if any(not h.live for h in pending):
            return ServerUnavailableError(message)
        return ModelNotReadyError(message)

    def infer_request(self, inputs: list[Any], outputs: list[Any]) -> Callable[[Any, float], Any]:
        """One ensemble inference as the twins' ``_call`` sends it: tritonclient's sync and asyncio
        ``infer`` take the same arguments (the asyncio one returns a coroutine for ``_call`` to await)."""

        def send(triton: Any, deadline_s: float) -> Any:
            return triton.infer(
                self.model_name,
                inputs,
                model_version=self.model_version,
                outputs=outputs,
                headers=self.headers,
                client_timeout=deadline_s,
            )

        return send

    def describe(self, cls: str) -> str:
        urls = self.urls[0] if len(self.urls) == 1 else list(self.urls)
        return f"{cls}(url={urls!r}, model_name={self.model_name!r})"


def validate_concurrency(concurrency: int) -> None:
    """Reject a concurrency that would run nothing (0) or is not a count."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")


class BatchCollector:
    """Gathers ``classify_many`` outcomes, reports progress and returns them in the order asked for.

    ``add`` is called from one thread (or one event loop) only, so the callback never runs twice at once.
    """

    def __init__(self, total: int, *, ordered: bool, on_progress: ProgressCallback | None) -> None:
        self._total = total
        self._ordered = ordered
        self._on_progress = on_progress
        self._completed: list[BatchItem] = []
        self._failed = 0

    def add(self, item: BatchItem) -> None:
        """Record one finished input and report progress."""
        self._completed.append(item)
        if not item.ok:
            self._failed += 1
            _LOGGER.debug("input %d failed: %s", item.index, item.error)
        if self._on_progress is not None:
            self._on_progress(
                BatchProgress(item=item, done=len(self._completed), failed=self._failed, total=self._total)
            )

    def results(self) -> list[BatchItem]:
        """Every outcome: in input order, or in completion order when ``ordered`` is False."""
        if len(self._completed) != self._total:
            raise RuntimeError(f"{len(self._completed)} of {self._total} inputs finished")
        if self._ordered:
            return sorted(self._completed, key=lambda item: item.index)
        return list(self._completed)


class TimelineRun:
    """Bookkeeping of one ``classify_timeline`` call, shared by both clients.

    Windows are consumed one at a time and only their (start, end) kept, and the clients keep at
    most ``max_in_flight`` windows sent but unanswered, so memory stays flat however long the
    recording is.
    """

    def __init__(
        self, info: ModelInfo, *, window_s: float, hop_s: float, smooth_s: float, concurrency: int
    ) -> None:
        codec.validate_timeline(window_s, hop_s, smooth_s, info)
        validate_concurrency(concurrency)
        self.info = info
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self.smooth_s = float(smooth_s)
        self.max_in_flight = 2 * concurrency
        self.spans: list[tuple[float, float]] = []

    def windows(self, audio: AudioSource, sample_rate: int | None) -> Iterator[Window]:
        """The recording's windows, streamed; each one's span is recorded as it is handed out."""
        for window in iter_windows(
            audio,
            sample_rate=sample_rate,
            target_rate=self.info.sample_rate,
            window_s=self.window_s,
            hop_s=self.hop_s,
        ):
            self.spans.append((window.start_s, window.end_s))
            yield window

    def finish(self, results: Sequence[Classification]) -> Timeline:
        return build_timeline(
            self.spans,
            results,
            labels=self.info.labels,
            window_s=self.window_s,
            hop_s=self.hop_s,
            smooth_s=self.smooth_s,
            untrained=self.info.untrained,
        )
