"""Triton Python-backend model `stream`: live audio in, an emotion update out for every hop.

Each stream is a Triton sequence (the sequence batcher's correlation ID, START and END flags) sent
over one gRPC bidirectional stream. Only new audio crosses the wire: the model keeps what the next
windows need (stream_windows.py, at most one window per stream) and classifies each window as it
completes by calling the ensemble through BLS, so live windows share the classifier's dynamic
batches with ordinary requests, and an update equals `classify()` on the same samples. The model
is decoupled: a chunk is answered by one response per window it completed (often none), then a
final empty response; the END chunk's updates are followed by one response of `done` alone (and
`end_s`: the stream's length), so that a client knows every update is in. `execute` is a
coroutine: while one chunk's windows are classified, other streams' chunks go on; a stream's own
chunks are taken in the order they came (a lock per stream).

A stream's parameters come with its START request (`window_s`, `hop_s`). A chunk that cannot be
taken (not finite, too loud, too long) ends that stream with an error naming the problem; the
others are untouched. A stream idle for longer than the model's timeout is forgotten, here and by
Triton's sequence batcher (`max_sequence_idle_microseconds`); a client that vanished costs no more.
Past `max_streams` live streams a new one is refused, naming the limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub
from stream_windows import StreamError, StreamWindows  # copied beside this file
from waveform import WaveformError, WaveformLimits, validate  # copied beside this file

MIN_HOP_S = 0.25
"""The shortest hop a stream may ask for: updates four times a second."""


@dataclasses.dataclass
class Stream:
    windows: StreamWindows
    lock: asyncio.Lock
    last_seen: float


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.rate = int(parameters["sample_rate"])
        self.min_samples = int(parameters["min_samples"])
        self.max_samples = int(parameters["max_samples"])
        self.limits = WaveformLimits(
            sample_rate=self.rate,
            min_samples=1,
            max_samples=self.max_samples,
            max_abs_amplitude=float(parameters["max_abs_amplitude"]),
        )
        self.ensemble = parameters["ensemble"]
        self.audio_input = parameters["audio_input"]
        self.probabilities_output = parameters["probabilities_output"]
        self.chunk_input = config["input"][0]["name"]
        self.max_streams = int(parameters["max_streams"])
        self.idle_timeout_s = float(parameters["idle_timeout_s"])
        self.streams: dict[int, Stream] = {}
        self._guard = threading.Lock()
        self._family = pb_utils.MetricFamily(
            name="emotion_live_streams",
            description="live streams the stream model holds (each keeps at most one window of audio)",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self._live = self._family.Metric(labels={"model": args["model_name"]})
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="stream-sweeper", daemon=True)
        self._sweeper.start()

    def _sweep(self) -> None:
        """Forget streams idle past the timeout, even when no request comes to do it."""
        while not self._stop.wait(max(0.1, self.idle_timeout_s / 4)):
            self._forget_idle()

    def _forget_idle(self) -> None:
        now = time.monotonic()
        with self._guard:
            for key in [key for key, stream in self.streams.items() if now - stream.last_seen > self.idle_timeout_s]:
                del self.streams[key]
            self._live.set(float(len(self.streams)))

    async def execute(self, requests: list[Any]) -> None:
        await asyncio.gather(*(self._one(request) for request in requests))

    async def _one(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            await self._chunk(request, sender)
        except (StreamError, WaveformError, ValueError) as error:
            self._end(request.correlation_id())
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        except Exception as error:  # the classifier's failure: this stream ends, the model serves on
            self._end(request.correlation_id())
            sender.send(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"stream failed: {error}")),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    async def _chunk(self, request: Any, sender: Any) -> None:
        key = int(request.correlation_id())
        start = bool(_flag(request, "START"))
        end = bool(_flag(request, "END"))
        stream = self._begin(key, request) if start else self.streams.get(key)
        if stream is None:
            raise StreamError(
                f"stream {key} is unknown: it ended, failed, or was idle longer than {self.idle_timeout_s:g} s; "
                "start a new one"
            )
        async with stream.lock:
            stream.last_seen = time.monotonic()
            samples = pb_utils.get_input_tensor_by_name(request, self.chunk_input).as_numpy().reshape(1, -1)
            due = stream.windows.push(validate(samples, self.limits) if samples.size else samples[0])
            if end:
                last = stream.windows.finish()
                due += [last] if last is not None else []
            for window, probabilities in zip(due, await self._classify([w.samples for w in due]), strict=True):
                sender.send(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("start_s", np.array([[window.start / self.rate]], np.float64)),
                            pb_utils.Tensor(
                                "end_s", np.array([[(window.start + window.samples.size) / self.rate]], np.float64)
                            ),
                            pb_utils.Tensor("probabilities", probabilities.reshape(1, -1).astype(np.float32)),
                        ]
                    )
                )
            stream.last_seen = time.monotonic()
            if end:
                sender.send(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("done", np.array([[True]])),
                            pb_utils.Tensor("end_s", np.array([[stream.windows.received / self.rate]], np.float64)),
                        ]
                    )
                )
        if end:
            self._end(key)

    def _begin(self, key: int, request: Any) -> Stream:
        asked = json.loads(request.parameters() or "{}")
        window_s, hop_s = float(asked.get("window_s", 4.0)), float(asked.get("hop_s", 2.0))
        if not (np.isfinite(window_s) and np.isfinite(hop_s) and hop_s >= MIN_HOP_S):
            raise StreamError(f"hop_s must be at least {MIN_HOP_S:g} s, got {hop_s:g}")
        window, hop = round(window_s * self.rate), round(hop_s * self.rate)
        if not self.min_samples <= window <= self.max_samples:
            raise StreamError(
                f"window_s must lie within the model's limits {self.min_samples / self.rate:g} s to "
                f"{self.max_samples / self.rate:g} s, got {window_s:g}"
            )
        with self._guard:
            if key not in self.streams and len(self.streams) >= self.max_streams:
                raise StreamError(
                    f"the server holds at most {self.max_streams} live streams and all are in use; "
                    "try again when one ends"
                )
            stream = Stream(
                StreamWindows(window=window, hop=hop, min_samples=self.min_samples, max_chunk=self.max_samples),
                asyncio.Lock(),
                time.monotonic(),
            )
            self.streams[key] = stream
            self._live.set(float(len(self.streams)))
        return stream

    def _end(self, key: int) -> None:
        with self._guard:
            self.streams.pop(int(key), None)
            self._live.set(float(len(self.streams)))

    async def _classify(self, windows: list[Any]) -> list[Any]:
        """Each window through the ensemble, all at once: they join the classifier's dynamic batches."""
        calls = [
            pb_utils.InferenceRequest(
                model_name=self.ensemble,
                inputs=[pb_utils.Tensor(self.audio_input, samples.reshape(1, -1).astype(np.float32))],
                requested_output_names=[self.probabilities_output],
            ).async_exec()
            for samples in windows
        ]
        rows = []
        for response in await asyncio.gather(*calls):
            if response.has_error():
                raise RuntimeError(response.error().message())
            rows.append(pb_utils.get_output_tensor_by_name(response, self.probabilities_output).as_numpy())
        return rows

    def finalize(self) -> None:
        self._stop.set()
        self.__dict__.pop("_live", None)  # a metric goes before its family
        self.__dict__.pop("_family", None)


def _flag(request: Any, name: str) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor is not None and bool(np.asarray(tensor.as_numpy()).reshape(-1)[0])
