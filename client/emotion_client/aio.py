"""asyncio twin of ``EmotionClient`` on ``tritonclient.grpc.aio``: the same methods, awaited.

Only I/O differs from the blocking client: settings, round-robin, retries and error mapping come
from ``_base`` and the protocol from ``codec``. Audio files are decoded and resampled in a worker
thread, so a large file never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as aiogrpcclient  # type: ignore[import-untyped, unused-ignore]
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

__all__ = ["AsyncEmotionClient"]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")


class AsyncEmotionClient:
    """Classify speech emotion from asyncio code; every method of ``EmotionClient``, as a coroutine.

    Settings, errors, retries, round-robin over several endpoints and timeouts behave exactly as
    in ``EmotionClient``.

    **Connections.** One gRPC channel per endpoint, opened on the first call inside the running
    event loop and reused until ``await client.close()``.

    **Concurrency.** Any number of coroutines may use one client at once (that is what
    ``classify_many`` does). A client belongs to the event loop it first ran in and is not
    thread-safe: give each thread or loop its own client.

    Example::

        async with AsyncEmotionClient("localhost:8001") as client:
            result = await client.classify("clip.wav")
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
        """Validate the settings; no channel is opened and nothing is sent until the first await.

        Arguments are those of ``EmotionClient``.
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
        self._info_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tritons: list[Any] = []
        self._closed = False

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

    async def model_info(self, *, timeout_s: float | None = None) -> ModelInfo:
        """The ensemble's labels, rate, tensor names and limits; as ``EmotionClient.model_info``."""
        self._open_channels()
        if self._info_lock is None:
            self._info_lock = asyncio.Lock()
        async with self._info_lock:
            if self._info is None:
                core = self._core
                try:
                    config = await self._call(
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
                    index = await self._index(timeout_s)
                    unknown = codec.unknown_model(
                        core.model_name,
                        core.model_version,
                        await self._served_models(index, timeout_s),
                        indexed=codec.indexed_names(index),
                    )
                    raise (unknown or error) from error
                self._info = codec.parse_model_info(config, model_name=core.model_name)
                _LOGGER.debug("loaded %s", self._info)
            return self._info

    async def classify(
        self,
        audio: AudioSource,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        top_k: int | None = None,
        timeout_s: float | None = None,
    ) -> Classification:
        """Classify one clip; arguments and result as in ``EmotionClient.classify``."""
        codec.validate_top_k(top_k)
        codec.validate_timeout_s(timeout_s)
        for attempt in range(2):
            info = await self.model_info(timeout_s=timeout_s)
            samples = await asyncio.to_thread(codec.prepare_audio, audio, sample_rate, info)
            started = time.perf_counter()
            response = await self._infer(
                codec.build_inputs(samples, info), codec.build_outputs(info), timeout_s=timeout_s
            )
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

    def _forget_info(self, info: ModelInfo) -> None:
        """The next call reads the model's description again (unless another coroutine already did)."""
        if self._info is info:
            _LOGGER.info("model '%s' was replaced on the server; reading it again", info.model_name)
            self._info = None

    async def embed(
        self, audio: AudioSource, sample_rate: int = DEFAULT_SAMPLE_RATE, *, timeout_s: float | None = None
    ) -> npt.NDArray[np.float32]:
        """The clip's pooled utterance embedding; as ``EmotionClient.embed``."""
        codec.validate_timeout_s(timeout_s)
        info = await self.model_info(timeout_s=timeout_s)
        outputs = codec.build_embedding_outputs(info)
        samples = await asyncio.to_thread(codec.prepare_audio, audio, sample_rate, info)
        inputs = codec.build_inputs(samples, info)
        response = await self._infer(inputs, outputs, timeout_s=timeout_s)
        return codec.decode_embedding(
            response.as_numpy(info.embedding_output), response.as_numpy(info.probabilities_output), info
        )

    async def classify_timeline(
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
        """Emotion over a recording of any length; as ``EmotionClient.classify_timeline``.

        File blocks are read in a worker thread so the event loop never waits on the disk.
        """
        codec.validate_timeout_s(timeout_s)
        run = TimelineRun(
            await self.model_info(timeout_s=timeout_s),
            window_s=window_s,
            hop_s=hop_s,
            smooth_s=smooth_s,
            concurrency=concurrency,
        )
        rate = run.info.sample_rate
        windows = run.windows(audio, sample_rate)
        results: list[Classification] = []
        pending: deque[asyncio.Task[Classification]] = deque()

        async def collect_oldest() -> None:
            results.append(await pending.popleft())
            if on_progress is not None:
                on_progress(run.spans[len(results) - 1][1])

        try:
            while (window := await asyncio.to_thread(next, windows, None)) is not None:
                pending.append(
                    asyncio.ensure_future(self.classify(window.samples, rate, timeout_s=timeout_s))
                )
                if len(pending) >= run.max_in_flight:
                    await collect_oldest()
            while pending:
                await collect_oldest()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return run.finish(results)

    async def stream(
        self,
        chunks: AsyncIterable[npt.NDArray[Any]] | Iterable[npt.NDArray[Any]],
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        hop_s: float = DEFAULT_HOP_S,
    ) -> AsyncIterator[StreamUpdate]:
        """Emotion of live audio; as ``EmotionClient.stream``, with ``chunks`` an async iterable (or a
        plain one) and the updates an async iterator: ``async for update in client.stream(chunks)``.
        Stopping early leaves the stream to the server's idle timeout."""
        session = StreamSession(
            await self.model_info(),
            await self.stream_info(),
            sample_rate=sample_rate,
            window_s=window_s,
            hop_s=hop_s,
        )
        self._open_channels()
        core = self._core
        failure: list[BaseException] = []

        async def requests() -> AsyncIterator[dict[str, Any]]:
            try:
                async for chunk in _each(chunks):
                    for piece in session.feed(chunk):
                        yield session.request(piece, end=False)
                pieces = session.finish()
                for piece in pieces[:-1]:
                    yield session.request(piece, end=False)
                yield session.request(pieces[-1], end=True)
            except Exception as error:  # the caller's iterator, or a bad chunk: raised below, not by grpc
                failure.append(error)

        responses = self._tritons[core.next_endpoint()].stream_infer(requests(), headers=core.headers)
        updates = 0
        try:
            async for result, error in responses:
                if failure:
                    raise failure[0]
                if error is not None:
                    raise stream_error(error, session.live, updates=updates) from error
                update = session.decode(result)
                if update is None:
                    return
                updates += 1
                yield update
            if failure:
                raise failure[0]
        except InferenceServerException as error:  # the call itself broke (the server went away)
            raise stream_error(error, session.live, updates=updates) from error
        finally:
            responses.cancel()

    async def stream_info(self) -> StreamInfo:
        """The model's live-stream twin; as ``EmotionClient.stream_info``."""
        name = codec.stream_model_name(await self.model_info())
        return StreamInfo.from_config(await self._config(name, None), model_name=name)

    async def models(self, *, timeout_s: float | None = None) -> tuple[ServedModel, ...]:
        """Every emotion model the server holds ready; as ``EmotionClient.models``."""
        return await self._served_models(await self._index(timeout_s), timeout_s)

    async def _index(self, timeout_s: float | None) -> Any:
        core = self._core
        return await self._call(
            lambda triton, deadline_s: triton.get_model_repository_index(
                headers=core.headers, as_json=True, client_timeout=deadline_s
            ),
            timeout_s=timeout_s,
        )

    async def _served_models(self, index: Any, timeout_s: float | None) -> tuple[ServedModel, ...]:
        ready = codec.ready_versions(index).items()
        found = [codec.served_model(name, vs, await self._config(name, timeout_s)) for name, vs in ready]
        return tuple(model for model in found if model is not None)

    async def _config(self, name: str, timeout_s: float | None) -> Any:
        core = self._core
        return await self._call(
            lambda triton, deadline_s: triton.get_model_config(
                name, headers=core.headers, as_json=True, client_timeout=deadline_s
            ),
            timeout_s=timeout_s,
        )

    async def load_model(self, *, timeout_s: float | None = 600.0) -> None:
        """Serve this model as its repository now says; as ``EmotionClient.load_model``."""
        await self._control("load", timeout_s)

    async def unload_model(self, *, timeout_s: float | None = 600.0) -> None:
        """Stop serving this model and its stream twin; as ``EmotionClient.unload_model``."""
        await self._control("unload", timeout_s)

    async def _control(self, action: codec.ControlAction, timeout_s: float | None) -> None:
        stream = (await self.model_info()).stream_model if action == "unload" else None
        await self._control_one(action, self._core.model_name, timeout_s)
        stream = stream if action == "unload" else (await self.model_info()).stream_model
        if stream is not None:
            await self._control_one(action, stream, timeout_s)

    async def _control_one(self, action: codec.ControlAction, name: str, timeout_s: float | None) -> None:
        core = self._core
        self._open_channels()
        for endpoint, triton in enumerate(self._tritons):
            try:
                await codec.send_control(triton, action, name, core.headers, core.deadline_s(timeout_s))
            except InferenceServerException as e:
                raise codec.control_error(action, name, core.map_error(e, endpoint, server_live=True)) from e
        self._info = None

    async def classify_many(
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
        """Classify many clips, ``concurrency`` at a time; as ``EmotionClient.classify_many``.

        ``on_progress`` runs in the event loop, once per finished clip. Cancelling the awaiting
        task cancels every clip still pending.
        """
        sources = list(inputs)
        codec.validate_top_k(top_k)
        codec.validate_timeout_s(timeout_s)
        validate_concurrency(concurrency)
        collector = BatchCollector(len(sources), ordered=ordered, on_progress=on_progress)
        if not sources:
            return []
        await self.model_info(timeout_s=timeout_s)
        slots = asyncio.Semaphore(concurrency)

        async def one(index: int, source: AudioSource) -> BatchItem:
            async with slots:
                try:
                    result = await self.classify(source, sample_rate, top_k=top_k, timeout_s=timeout_s)
                except EmotionClientError as e:
                    return BatchItem(index=index, source=source, error=e)
                return BatchItem(index=index, source=source, result=result)

        tasks = [asyncio.ensure_future(one(index, source)) for index, source in enumerate(sources)]
        try:
            for next_done in asyncio.as_completed(tasks):
                collector.add(await next_done)
        finally:
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return collector.results()

    async def health(self, *, timeout_s: float = LIVENESS_PROBE_TIMEOUT_S) -> tuple[EndpointHealth, ...]:
        """Ask every endpoint (concurrently) whether the server is live and the model ready; never raises."""
        codec.validate_timeout_s(timeout_s)
        if self._closed:
            return tuple(
                EndpointHealth(url=url, live=False, ready=False, error="client is closed")
                for url in self._core.urls
            )
        self._open_channels()
        return tuple(
            await asyncio.gather(
                *(self._endpoint_health(index, timeout_s) for index in range(len(self._core.urls)))
            )
        )

    async def is_ready(self) -> bool:
        """Report whether the model can serve requests on every endpoint now; never raises."""
        return all(entry.ready for entry in await self.health())

    async def wait_until_ready(self, timeout_s: float) -> None:
        """Wait until the model is ready on every endpoint; raises as ``EmotionClient.wait_until_ready``."""
        codec.validate_timeout_s(timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        interval_s = READY_POLL_INTERVAL_S
        while True:
            remaining_s = deadline - loop.time()
            health = await self.health(timeout_s=max(min(LIVENESS_PROBE_TIMEOUT_S, remaining_s), 0.01))
            if all(entry.ready for entry in health):
                return
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise self._core.not_ready_error(health, timeout_s)
            await asyncio.sleep(min(interval_s, remaining_s))
            interval_s = min(interval_s * 2, READY_POLL_MAX_INTERVAL_S)

    async def close(self) -> None:
        """Release every gRPC channel; safe to call more than once."""
        if not self._closed:
            self._closed = True
            tritons, self._tritons = self._tritons, []
            for triton in tritons:
                await triton.close()

    async def __aenter__(self) -> AsyncEmotionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    def _open_channels(self) -> None:
        """Create the channels in the running loop on first use; refuse use from another loop."""
        if self._closed:
            raise EmotionClientError(f"{type(self).__name__} is closed; create a new client")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            try:
                self._tritons = [
                    aiogrpcclient.InferenceServerClient(url=endpoint, **self._core.triton_kwargs)
                    for endpoint in self._core.urls
                ]
            except InferenceServerException as e:
                raise self._core.map_error(e, 0) from e
            self._loop = loop
        elif self._loop is not loop:
            raise EmotionClientError(
                f"{type(self).__name__} belongs to the event loop it first ran in; create one client per loop"
            )

    async def _infer(self, inputs: list[Any], outputs: list[Any], *, timeout_s: float | None) -> Any:
        """One inference on the ensemble, through the retrying error boundary."""
        return await self._call(self._core.infer_request(inputs, outputs), timeout_s=timeout_s)

    async def _call(self, send: Callable[[Any, float], Awaitable[_T]], *, timeout_s: float | None) -> _T:
        """Send with retries; the async twin of ``EmotionClient._call``."""
        self._open_channels()
        core = self._core
        deadline_s = core.deadline_s(timeout_s)
        attempt = 0
        while True:
            endpoint = core.next_endpoint()
            try:
                return await send(self._tritons[endpoint], deadline_s)
            except (InferenceServerException, ValueError) as e:  # ValueError: a channel closed under the call
                decision = core.after_failure(e, attempt, endpoint)
                if isinstance(decision, Fail):
                    error = decision.error
                    if decision.probe_liveness:
                        error = core.map_error(e, endpoint, server_live=await self._probe_liveness(endpoint))
                    raise error from e
            await asyncio.sleep(decision.delay_s)
            attempt += 1

    async def _probe_liveness(self, endpoint: int) -> bool:
        try:
            return bool(
                await self._tritons[endpoint].is_server_live(
                    headers=self._core.headers, client_timeout=LIVENESS_PROBE_TIMEOUT_S
                )
            )
        except InferenceServerException:
            return False

    async def _endpoint_health(self, endpoint: int, timeout_s: float) -> EndpointHealth:
        triton, core = self._tritons[endpoint], self._core
        live: bool | InferenceServerException
        ready: bool | InferenceServerException | None = None
        try:
            live = bool(await triton.is_server_live(headers=core.headers, client_timeout=timeout_s))
        except InferenceServerException as e:
            live = e
        if live is True:
            try:
                ready = bool(
                    await triton.is_model_ready(
                        core.model_name,
                        model_version=core.model_version,
                        headers=core.headers,
                        client_timeout=timeout_s,
                    )
                )
            except InferenceServerException as e:
                ready = e
        return core.endpoint_health(endpoint, live, ready)


async def _each(chunks: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    """An async or a plain iterable, as an async iterator."""
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk
