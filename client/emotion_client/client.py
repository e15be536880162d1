"""Blocking gRPC client: only I/O lives here; settings, retries and mapping are in ``_base``,
the protocol in ``codec``, shared with the async twin in ``aio``."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped, unused-ignore]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped, unused-ignore]

from . import codec
from ._base import BatchCollector, ClientCore, Fail, TimelineRun, validate_concurrency
from ._defaults import (
    DEFAULT_CONCURRENCY,
    DEFAULT_HOP_S,
    DEFAULT_MODEL_NAME,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_SMOOTH_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    DEFAULT_WINDOW_S,
    LIVENESS_PROBE_TIMEOUT_S,
    READY_POLL_INTERVAL_S,
    READY_POLL_MAX_INTERVAL_S,
)
from .audio import AudioSource
from .connection import TLSConfig
from .errors import EmotionClientError, ModelNotReadyError
from .results import (
    BatchItem,
    Classification,
    EndpointHealth,
    ModelInfo,
    ProgressCallback,
    ServedModel,
    StreamUpdate,
)
from .retry import RetryPolicy
from .streaming import StreamInfo, StreamSession, stream_error
from .timeline import Timeline

__all__ = ["EmotionClient"]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


class EmotionClient:
    """Classify the emotion of speech clips with the Triton ``emotion`` ensemble over gRPC.

    The model's labels, sample rate and tensor names are fetched from the server on first use
    and cached, so the client follows whatever model the server deploys. Every failure surfaces
    as an ``EmotionClientError`` subclass; tritonclient exceptions never escape.

    **Connections.** One gRPC channel per endpoint, opened on the first call and reused by every
    later call until ``close()``; create one client and share it rather than one per request.

    **Several endpoints.** Given several URLs, attempts go round-robin over them, and a retry after
    ``UNAVAILABLE`` goes to the next one, so a replica that is down costs a retry, not a failure.

    **Thread safety.** All methods may be called from any number of threads at once on one
    client (``classify_many`` itself uses a thread pool on the shared channels). Closing the
    client while other threads still call it makes those calls fail with ``EmotionClientError``.

    Example::

        with EmotionClient("localhost:8001") as client:
            result = client.classify("clip.wav", top_k=2)
            print(result.label, result.score)
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        model_version: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        tls: TLSConfig | bool | None = None,
        verbose: bool = False,
    ) -> None:
        """Validate the settings; channels connect lazily, so no request is made here.

        ``url`` is ``"host:port"``, a comma-separated list of them, or a sequence of them.
        ``timeout_s`` is the default deadline of each attempt; every method can override it.
        ``retry`` governs resending after ``UNAVAILABLE`` (default ``RetryPolicy()``; ``max_retries=0``
        turns it off). ``headers`` are sent with every request (e.g. an auth token). ``tls`` is a
        ``TLSConfig``, ``True`` for TLS with the system's roots, or ``None`` for plaintext.
        ``model_version`` empty lets the server pick per its version policy.
        """
        self._core = ClientCore(
            url,
            model_name=model_name,
            model_version=model_version,
            timeout_s=timeout_s,
            retry=retry,
            headers=headers,
            tls=tls,
            verbose=verbose,
        )
        self._info: ModelInfo | None = None
        self._info_lock = threading.Lock()
        self._closed = False
        self._tritons: list[Any] = []
        try:
            for endpoint in self._core.urls:
                self._tritons.append(
                    grpcclient.InferenceServerClient(url=endpoint, **self._core.triton_kwargs)
                )
        except InferenceServerException as e:
            self.close()
            raise self._core.map_error(e, len(self._tritons)) from e

    @property
    def url(self) -> str:
        """The first (or only) endpoint this client talks to."""
        return self._core.urls[0]

    @property
    def urls(self) -> tuple[str, ...]:
        """Every endpoint, in round-robin order."""
        return self._core.urls

    @property
    def model_name(self) -> str:
        """Ensemble this client classifies with."""
        return self._core.model_name

    def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        """Return the ensemble's labels, rate, tensor names and limits, fetched on first use and again
        after an answer shows the model was replaced (its labels or classes changed)."""
        self._ensure_open()
        with self._info_lock:
            if self._info is None:
                core = self._core
                try:
                    config = self._call(
                        lambda triton, deadline_s: triton.get_model_config(
                            core.model_name,
                            model_version=core.model_version,
                            headers=core.headers,
                            as_json=True,
                            client_timeout=deadline_s,
                        ),
                        timeout_s=timeout_s,
                    )
                except ModelNotReadyError as error:
                    index = self._index(timeout_s)
                    unknown = codec.unknown_model(
                        core.model_name,
                        core.model_version,
                        self._served_models(index, timeout_s),
                        indexed=codec.indexed_names(index),
                    )
                    raise (unknown or error) from error
                self._info = codec.parse_model_info(config, model_name=core.model_name)
                _LOGGER.debug("loaded %s", self._info)
            return self._info

    def _forget_info(self, info: ModelInfo) -> None:
        """The next call reads the model's description again (unless another thread already did)."""
        with self._info_lock:
            if self._info is info:
                _LOGGER.info("model '%s' was replaced on the server; reading it again", info.model_name)
                self._info = None

    def classify(
        self,
        audio: AudioSource,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        top_k: int | None = None,
        timeout_s: float | None = None,
    ) -> Classification:
        """Classify one clip and return its labels ranked by probability.

        ``audio`` is a 1-D (or ``(frames, channels)``) array sampled at ``sample_rate`` Hz, or a
        file path, in which case the file's own rate is used and ``sample_rate`` is ignored.
        Audio at another rate than the model's is resampled here, so callers need not know it.
        ``top_k`` limits ``Classification.scores`` to the best ``top_k`` classes (None: all).
        ``timeout_s`` overrides the client's default deadline of each attempt for this call only.
        """
        codec.validate_top_k(top_k)
        codec.validate_timeout_s(timeout_s)
        for attempt in range(2):
            info = self.model_info(timeout_s=timeout_s)
            samples = codec.prepare_audio(audio, sample_rate, info)
            started = time.perf_counter()
            inputs, outputs = codec.build_inputs(samples, info), codec.build_outputs(info)
            response = self._infer(inputs, outputs, timeout_s=timeout_s)
            _LOGGER.debug(
                "classified %.2f s of audio in %.1f ms",
                samples.shape[0] / info.sample_rate,
                (time.perf_counter() - started) * 1000.0,
            )
            try:
                result, relabelled = codec.decode_answer(response, info, top_k=top_k)
            except codec.ModelChangedError:
                if attempt:
                    raise
                self._forget_info(info)  # another number of classes: read the model again and resend
                continue
            if relabelled:
                self._forget_info(info)
            return result
        raise AssertionError("unreachable")

    def embed(
        self, audio: AudioSource, sample_rate: int = DEFAULT_SAMPLE_RATE, *, timeout_s: float | None = None
    ) -> npt.NDArray[np.float32]:
        """The clip's pooled utterance embedding (what the classifier head reads), 1-D float32.

        For clustering or searching speakers' emotional states; like the scores, it does not
        depend on which other requests the server batched the clip with.
        """
        codec.validate_timeout_s(timeout_s)
        info = self.model_info(timeout_s=timeout_s)
        outputs = codec.build_embedding_outputs(info)
        inputs = codec.build_inputs(codec.prepare_audio(audio, sample_rate, info), info)
        response = self._infer(inputs, outputs, timeout_s=timeout_s)
        return codec.decode_embedding(
            response.as_numpy(info.embedding_output), response.as_numpy(info.probabilities_output), info
        )

    def classify_timeline(
        self,
        audio: AudioSource,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        hop_s: float = DEFAULT_HOP_S,
        smooth_s: float = DEFAULT_SMOOTH_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_s: float | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Timeline:
        """Emotion over a recording of any length: overlapping windows sent concurrently.

        Files are streamed (read, downmixed and resampled block by block), so hours of audio
        never sit in memory at once; the server batches the concurrent windows. Returns one
        ``Segment`` per window and a per-second track smoothed over ``smooth_s`` seconds.
        ``on_progress`` gets the seconds of audio answered so far, in the calling thread.
        A window that fails fails the whole call with that window's error.
        """
        codec.validate_timeout_s(timeout_s)
        run = TimelineRun(
            self.model_info(timeout_s=timeout_s),
            window_s=window_s,
            hop_s=hop_s,
            smooth_s=smooth_s,
            concurrency=concurrency,
        )
        rate = run.info.sample_rate
        results: list[Classification] = []
        pending: deque[Future[Classification]] = deque()

        def collect_oldest() -> None:
            results.append(pending.popleft().result())
            if on_progress is not None:
                on_progress(run.spans[len(results) - 1][1])

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="emotion-timeline") as pool:
            try:
                for window in run.windows(audio, sample_rate):
                    pending.append(pool.submit(self.classify, window.samples, rate, timeout_s=timeout_s))
                    if len(pending) >= run.max_in_flight:
                        collect_oldest()
                while pending:
                    collect_oldest()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return run.finish(results)

    def stream(
        self,
        chunks: Iterable[npt.NDArray[Any]],
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        hop_s: float = DEFAULT_HOP_S,
    ) -> Iterator[StreamUpdate]:
        """Emotion of live audio: an update for every hop of new audio once a full window is in.

        ``chunks`` is any iterable of 1-D arrays (any size, float in [-1, 1] or integer PCM) at
        ``sample_rate``, arriving at whatever pace its source has; only new audio crosses the wire.
        Updates come in order, each equal to ``classify()`` on exactly its window's samples; at
        the end one more covers the tail, if it is long enough. The iterator ends when ``chunks``
        does. A stream lives on one server: a server that goes away raises
        ``StreamInterruptedError``, a stream idle past the server's timeout ``StreamExpiredError``,
        one past the server's limit of streams ``StreamRefusedError`` (docs/streaming.md).
        Stopping early (``break``) ends the stream on the server too.
        """
        session = StreamSession(
            self.model_info(), self.stream_info(), sample_rate=sample_rate, window_s=window_s, hop_s=hop_s
        )
        return self._stream(iter(chunks), session)

    def stream_info(self) -> StreamInfo:
        """The model's live-stream twin: its input, its limit of streams and its idle timeout."""
        name = codec.stream_model_name(self.model_info())
        return StreamInfo.from_config(self._config(name, None), model_name=name)

    def models(self, *, timeout_s: float | None = None) -> tuple[ServedModel, ...]:
        """Every emotion model the server holds ready, by name, with its ready versions and what its
        config says (labels, limits, precision, engine, family). Other models are left out."""
        return self._served_models(self._index(timeout_s), timeout_s)

    def _index(self, timeout_s: float | None) -> Any:
        core = self._core
        return self._call(
            lambda triton, deadline_s: triton.get_model_repository_index(
                headers=core.headers, as_json=True, client_timeout=deadline_s
            ),
            timeout_s=timeout_s,
        )

    def _served_models(self, index: Any, timeout_s: float | None) -> tuple[ServedModel, ...]:
        ready = codec.ready_versions(index).items()
        found = [codec.served_model(name, vs, self._config(name, timeout_s)) for name, vs in ready]
        return tuple(model for model in found if model is not None)

    def _config(self, name: str, timeout_s: float | None) -> Any:
        core = self._core
        return self._call(
            lambda triton, deadline_s: triton.get_model_config(
                name, headers=core.headers, as_json=True, client_timeout=deadline_s
            ),
            timeout_s=timeout_s,
        )

    def load_model(self, *, timeout_s: float | None = 600.0) -> None:
        """Have a server started with ``serve --model-control explicit`` serve this model as its repository
        now says, with its live-stream twin: how a new or pinned version goes live (the old one answers
        until the new one is ready)."""
        self._control("load", timeout_s)

    def unload_model(self, *, timeout_s: float | None = 600.0) -> None:
        """Stop serving this model (and its live-stream twin); calls to it then raise ModelNotReadyError."""
        self._control("unload", timeout_s)

    def _control(self, action: codec.ControlAction, timeout_s: float | None) -> None:
        # The stream twin is named in the ensemble's config, which a server shows for a loaded model only:
        # read before unloading, after loading.
        stream = self.model_info().stream_model if action == "unload" else None
        self._control_one(action, self._core.model_name, timeout_s)
        stream = stream if action == "unload" else self.model_info().stream_model
        if stream is not None:
            self._control_one(action, stream, timeout_s)

    def _control_one(self, action: codec.ControlAction, name: str, timeout_s: float | None) -> None:
        """On every endpoint (each replica has its own repository copy); no resend: a load may have begun."""
        core = self._core
        self._ensure_open()
        for endpoint, triton in enumerate(self._tritons):
            try:
                codec.send_control(triton, action, name, core.headers, core.deadline_s(timeout_s))
            except InferenceServerException as e:
                raise codec.control_error(action, name, core.map_error(e, endpoint, server_live=True)) from e
        with self._info_lock:
            self._info = None

    def _stream(self, chunks: Iterator[npt.NDArray[Any]], session: StreamSession) -> Iterator[StreamUpdate]:
        """One gRPC stream of its own (tritonclient allows one per client object): a thread sends the
        caller's chunks as they come, tritonclient's calls back with responses, this generator yields."""
        self._ensure_open()
        core = self._core
        triton = grpcclient.InferenceServerClient(url=core.urls[core.next_endpoint()], **core.triton_kwargs)
        responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        stop = threading.Event()
        triton.start_stream(
            callback=lambda result, error: responses.put((result, error)), headers=core.headers
        )

        def send() -> None:
            try:
                for chunk in chunks:
                    for piece in session.feed(chunk):
                        if stop.is_set():
                            return
                        triton.async_stream_infer(**session.request(piece, end=False))
                pieces = session.finish()
                for piece in pieces[:-1]:
                    triton.async_stream_infer(**session.request(piece, end=False))
                if not stop.is_set():
                    triton.async_stream_infer(**session.request(pieces[-1], end=True))
            except BaseException as error:  # the caller's iterator, or a bad chunk: raised by the consumer
                responses.put((None, error))

        sender = threading.Thread(target=send, name="emotion-stream", daemon=True)
        sender.start()
        updates, done = 0, False
        try:
            while True:
                result, error = responses.get()
                if isinstance(error, InferenceServerException):
                    raise stream_error(error, session.live, updates=updates) from error
                if error is not None:
                    raise error
                update = session.decode(result)
                if update is None:
                    done = True
                    return
                updates += 1
                yield update
        finally:
            stop.set()
            if not done and session.sent:
                with contextlib.suppress(InferenceServerException):  # ends the stream on the server too
                    triton.async_stream_infer(**session.request(np.zeros(0, np.float32), end=True))
            triton.stop_stream(cancel_requests=not done)
            triton.close()

    def classify_many(
        self,
        inputs: Iterable[AudioSource],
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        ordered: bool = True,
        top_k: int | None = None,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[BatchItem]:
        """Classify many clips with up to ``concurrency`` requests in flight; one ``BatchItem`` each.

        A clip that fails (unreadable file, too short, timed out, ...) gets a ``BatchItem`` with
        its ``error`` and does not stop the others. The list is in input order, or in completion
        order when ``ordered`` is False. ``on_progress`` is called in the calling thread once per
        finished clip, in completion order; an exception it raises cancels the clips not started
        and propagates. Raises only for bad arguments or when the model cannot be reached at all
        (checked once before any clip is sent).
        """
        sources = list(inputs)
        codec.validate_top_k(top_k)
        codec.validate_timeout_s(timeout_s)
        validate_concurrency(concurrency)
        collector = BatchCollector(len(sources), ordered=ordered, on_progress=on_progress)
        if not sources:
            return []
        self.model_info(timeout_s=timeout_s)

        def one(index: int, source: AudioSource) -> BatchItem:
            try:
                result = self.classify(source, sample_rate, top_k=top_k, timeout_s=timeout_s)
            except EmotionClientError as e:
                return BatchItem(index=index, source=source, error=e)
            return BatchItem(index=index, source=source, result=result)

        if concurrency == 1:
            for index, source in enumerate(sources):
                collector.add(one(index, source))
            return collector.results()
        with ThreadPoolExecutor(
            max_workers=min(concurrency, len(sources)), thread_name_prefix="emotion"
        ) as pool:
            futures = [pool.submit(one, index, source) for index, source in enumerate(sources)]
            try:
                for future in as_completed(futures):
                    collector.add(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return collector.results()

    def health(self, *, timeout_s: float = LIVENESS_PROBE_TIMEOUT_S) -> tuple[EndpointHealth, ...]:
        """Ask every endpoint whether the server is live and the model ready; never raises."""
        codec.validate_timeout_s(timeout_s)
        return tuple(self._endpoint_health(index, timeout_s) for index in range(len(self._core.urls)))

    def is_ready(self) -> bool:
        """Report whether the model can serve requests on every endpoint now; never raises.

        Meant for health checks and start-up polling, where "no" is an answer, not an error.
        """
        return all(entry.ready for entry in self.health())

    def wait_until_ready(self, timeout_s: float) -> None:
        """Block until the model is ready on every endpoint, polling with growing pauses.

        Raises ``ServerUnavailableError`` (some endpoint never answered) or ``ModelNotReadyError``
        (servers up, model not loaded) when ``timeout_s`` passes first; the message names each
        endpoint and why.
        """
        codec.validate_timeout_s(timeout_s)
        deadline = time.monotonic() + timeout_s
        interval_s = READY_POLL_INTERVAL_S
        while True:
            remaining_s = deadline - time.monotonic()
            health = self.health(timeout_s=max(min(LIVENESS_PROBE_TIMEOUT_S, remaining_s), 0.01))
            if all(entry.ready for entry in health):
                return
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise self._core.not_ready_error(health, timeout_s)
            time.sleep(min(interval_s, remaining_s))
            interval_s = min(interval_s * 2, READY_POLL_MAX_INTERVAL_S)

    def close(self) -> None:
        """Release every gRPC channel; safe to call more than once."""
        if not self._closed:
            self._closed = True
            for triton in self._tritons:
                triton.close()

    def __enter__(self) -> EmotionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    def _infer(self, inputs: list[Any], outputs: list[Any], *, timeout_s: float | None) -> Any:
        """One inference on the ensemble, through the retrying error boundary."""
        return self._call(self._core.infer_request(inputs, outputs), timeout_s=timeout_s)

    def _ensure_open(self) -> None:
        if self._closed:
            raise EmotionClientError(f"{type(self).__name__} is closed; create a new client")

    def _call(self, send: Callable[[Any, float], _T], *, timeout_s: float | None) -> _T:
        """Send with retries; the single boundary where tritonclient exceptions become this SDK's errors."""
        self._ensure_open()
        core = self._core
        deadline_s = core.deadline_s(timeout_s)
        attempt = 0
        while True:
            endpoint = core.next_endpoint()
            try:
                return send(self._tritons[endpoint], deadline_s)
            except (InferenceServerException, ValueError) as e:  # ValueError: a channel another thread closed
                self._ensure_open()
                decision = core.after_failure(e, attempt, endpoint)
                if isinstance(decision, Fail):
                    error = decision.error
                    if decision.probe_liveness:
                        error = core.map_error(e, endpoint, server_live=self._probe_liveness(endpoint))
                    raise error from e
            time.sleep(decision.delay_s)
            attempt += 1

    def _probe_liveness(self, endpoint: int) -> bool:
        """Tell "server down" from "model not loaded", which gRPC both report as UNAVAILABLE."""
        try:
            return bool(
                self._tritons[endpoint].is_server_live(
                    headers=self._core.headers, client_timeout=LIVENESS_PROBE_TIMEOUT_S
                )
            )
        except InferenceServerException:
            return False

    def _endpoint_health(self, endpoint: int, timeout_s: float) -> EndpointHealth:
        if self._closed:
            return EndpointHealth(
                url=self._core.urls[endpoint], live=False, ready=False, error="client is closed"
            )
        triton, core = self._tritons[endpoint], self._core
        live: bool | InferenceServerException
        ready: bool | InferenceServerException | None = None
        try:
            live = bool(triton.is_server_live(headers=core.headers, client_timeout=timeout_s))
        except InferenceServerException as e:
            live = e
        if live is True:
            try:
                ready = bool(
                    triton.is_model_ready(
                        core.model_name,
                        model_version=core.model_version,
                        headers=core.headers,
                        client_timeout=timeout_s,
                    )
                )
            except InferenceServerException as e:
                ready = e
        return core.endpoint_health(endpoint, live, ready)
