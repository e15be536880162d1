"""Blocking gRPC client: only I/O lives here, everything else is in ``codec``.

Keeping this class thin is what lets an async twin share the codec without duplicating any
validation, tensor layout or decoding logic.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from types import TracebackType

import tritonclient.grpc as grpcclient  # type: ignore[import-untyped, unused-ignore]
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped, unused-ignore]

from . import codec
from ._defaults import (
    DEFAULT_MODEL_NAME,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    LIVENESS_PROBE_TIMEOUT_S,
)
from .audio import AudioSource
from .errors import EmotionClientError, from_triton_error, is_ambiguous_unavailable
from .results import Classification, ModelInfo

__all__ = ["EmotionClient"]

_LOGGER = logging.getLogger(__name__)


class EmotionClient:
    """Classify the emotion of speech clips with the Triton ``emotion`` ensemble over gRPC.

    The model's labels, sample rate and tensor names are fetched from the server on first use
    and cached, so the client follows whatever model the server deploys. Every failure surfaces
    as an ``EmotionClientError`` subclass; tritonclient exceptions never escape.

    Example::

        with EmotionClient("localhost:8001") as client:
            result = client.classify("clip.wav", top_k=2)
            print(result.label, result.score)
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        model_version: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ssl: bool = False,
        verbose: bool = False,
    ) -> None:
        """Create the channel lazily; no request is made until the first call.

        ``timeout_s`` is the default deadline of every call; ``classify`` can override it.
        ``model_version`` empty lets the server pick per its version policy.
        """
        codec.validate_timeout_s(timeout_s)
        self._url = url
        self._model_name = model_name
        self._model_version = model_version
        self._timeout_s = float(timeout_s)
        self._info: ModelInfo | None = None
        self._info_lock = threading.Lock()
        self._closed = False
        with self._triton_errors():
            self._client = grpcclient.InferenceServerClient(url=url, ssl=ssl, verbose=verbose)

    @property
    def url(self) -> str:
        """Server address this client talks to."""
        return self._url

    @property
    def model_name(self) -> str:
        """Ensemble this client classifies with."""
        return self._model_name

    def model_info(self) -> ModelInfo:
        """Return the ensemble's labels, rate, tensor names and limits, fetched once per client."""
        self._ensure_open()
        with self._info_lock:
            if self._info is None:
                with self._triton_errors():
                    config = self._client.get_model_config(
                        self._model_name,
                        model_version=self._model_version,
                        as_json=True,
                        client_timeout=self._timeout_s,
                    )
                self._info = codec.parse_model_info(config, model_name=self._model_name)
                _LOGGER.debug("loaded %s", self._info)
            return self._info

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
        ``timeout_s`` overrides the client's default deadline for this call only.
        """
        codec.validate_top_k(top_k)
        codec.validate_timeout_s(timeout_s)
        info = self.model_info()
        samples = codec.prepare_audio(audio, sample_rate, info)
        deadline_s = self._timeout_s if timeout_s is None else float(timeout_s)
        started = time.perf_counter()
        with self._triton_errors():
            response = self._client.infer(
                self._model_name,
                codec.build_inputs(samples, info),
                model_version=self._model_version,
                outputs=codec.build_outputs(info),
                client_timeout=deadline_s,
            )
        _LOGGER.debug(
            "classified %.2f s of audio in %.1f ms",
            samples.shape[0] / info.sample_rate,
            (time.perf_counter() - started) * 1000.0,
        )
        return codec.decode_classification(response.as_numpy(info.probabilities_output), info, top_k=top_k)

    def is_ready(self) -> bool:
        """Report whether the model can serve requests now; never raises for a down server.

        Meant for health checks and start-up polling, where "no" is an answer, not an error.
        """
        if self._closed:
            return False
        try:
            return bool(
                self._client.is_model_ready(
                    self._model_name,
                    model_version=self._model_version,
                    client_timeout=self._timeout_s,
                )
            )
        except InferenceServerException as e:
            _LOGGER.debug("readiness check of model '%s' failed: %s", self._model_name, e)
            return False

    def close(self) -> None:
        """Release the gRPC channel; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._client.close()

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
        return f"EmotionClient(url={self._url!r}, model_name={self._model_name!r})"

    def _ensure_open(self) -> None:
        if self._closed:
            raise EmotionClientError("EmotionClient is closed; create a new client")

    @contextlib.contextmanager
    def _triton_errors(self) -> Iterator[None]:
        """The single boundary where tritonclient exceptions become this SDK's errors."""
        try:
            yield
        except InferenceServerException as e:
            server_live = self._probe_liveness() if is_ambiguous_unavailable(e) else None
            raise from_triton_error(e, model_name=self._model_name, server_live=server_live) from e

    def _probe_liveness(self) -> bool:
        """Tell "server down" from "model not loaded", which gRPC both report as UNAVAILABLE."""
        client = getattr(self, "_client", None)
        if client is None:
            return False
        try:
            return bool(client.is_server_live(client_timeout=LIVENESS_PROBE_TIMEOUT_S))
        except InferenceServerException:
            return False
