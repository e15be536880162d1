"""make bench-live: latency and capacity of live streams on the default cpu export (docs/streaming.md).

Each stream sends 100 ms chunks of espeak-ng speech at real-time pace over its own gRPC stream (the
`stream` model: only new audio crosses the wire) from one asyncio load generator on the same
machine. An update's lag is the time from sending the chunk that completed its window to
receiving the update. Latency: p50 and p99 of the lag at one stream and at the capacity point.
Capacity: the most concurrent streams with every update's lag under one hop for the whole run,
against the bound the served throughput sets (served audio-s/s / (window / hop): each stream asks
window / hop seconds of classification per second of audio). Writes the "live" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from speed.context import machine_name
from speed.inprocess import inprocess_call, load_served
from speed.progress import log
from speed.sections import REPO_ROOT, write_section

from emotion_build.export.pipeline import describe, export
from emotion_build.export.speech import synthesise
from emotion_build.model.loading import random_model
from emotion_build.repository.description import BatchingSettings, StreamSettings
from emotion_build.server.launcher import TritonServer

RATE = 16000
CHUNK_S = 0.1


@dataclasses.dataclass(frozen=True, slots=True)
class LiveRun:
    streams: int
    seconds: float
    updates: int
    failures: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    hop_s: float

    @property
    def keeps_up(self) -> bool:
        return self.failures == 0 and self.updates > 0 and self.max_ms < 1000 * self.hop_s


async def one_stream(
    client: aioclient.InferenceServerClient,
    audio: npt.NDArray[np.float32],
    *,
    sequence_id: int,
    seconds: float,
    window_s: float,
    hop_s: float,
    lags: list[float],
    failures: list[str],
    delay_s: float = 0.0,
) -> None:
    """`seconds` of `audio` (looped) in real-time chunks from `delay_s` on; each update's lag into `lags`."""
    chunk = round(CHUNK_S * RATE)
    sent_at: dict[int, float] = {}
    chunks = round(seconds / CHUNK_S)
    started = time.monotonic() + delay_s

    async def requests() -> AsyncIterator[dict[str, object]]:
        for index in range(chunks):
            await asyncio.sleep(max(0.0, started + index * CHUNK_S - time.monotonic()))
            start = (index * chunk) % (audio.size - chunk)
            tensor = grpcclient.InferInput("chunk", [1, chunk], "FP32")
            tensor.set_data_from_numpy(audio[None, start : start + chunk])
            sent_at[(index + 1) * chunk] = time.monotonic()
            yield {
                "model_name": "stream",
                "inputs": [tensor],
                "sequence_id": sequence_id,
                "sequence_start": index == 0,
                "sequence_end": index == chunks - 1,
                "parameters": {"window_s": window_s, "hop_s": hop_s} if index == 0 else None,
            }

    async for result, error in client.stream_infer(requests()):
        if error is not None:
            failures.append(str(error))
            return
        done = result.as_numpy("done")
        if done is not None:
            return
        end = round(float(result.as_numpy("end_s").reshape(-1)[0]) * RATE)
        if end in sent_at:  # not the end-aligned last window, which no single chunk completes
            lags.append(time.monotonic() - sent_at[end])


async def streams_at_once(
    url: str,
    audio: npt.NDArray[np.float32],
    count: int,
    *,
    seconds: float,
    window_s: float,
    hop_s: float,
    aligned: bool = False,
) -> LiveRun:
    """`count` streams, their starts spread evenly over one hop as independent callers' are (or, `aligned`,
    all at once: every stream completes its window at the same instant, the worst case)."""
    lags: list[float] = []
    failures: list[str] = []
    client = aioclient.InferenceServerClient(url)
    try:
        await asyncio.gather(
            *(
                one_stream(
                    client,
                    np.roll(audio, 7919 * index),
                    sequence_id=1 + index,
                    seconds=seconds,
                    window_s=window_s,
                    hop_s=hop_s,
                    lags=lags,
                    failures=failures,
                    delay_s=0.0 if aligned else hop_s * index / count,
                )
                for index in range(count)
            )
        )
    finally:
        await client.close()
    ms = np.asarray(lags) * 1000.0
    return LiveRun(
        count,
        seconds,
        len(lags),
        len(failures),
        float(np.percentile(ms, 50)) if lags else float("nan"),
        float(np.percentile(ms, 99)) if lags else float("nan"),
        float(ms.max()) if lags else float("nan"),
        hop_s,
    )


def served_throughput(url: str, audio: npt.NDArray[np.float32], window_s: float) -> float:
    """Audio-s/s the server classifies in windows of `window_s` from 8 requests in flight: the bound's numerator."""
    window = round(window_s * RATE)
    clips = [audio[start : start + window] for start in range(0, audio.size - window, window // 2)][:16]
    client = grpcclient.InferenceServerClient(url)
    done: list[float] = []

    def sent(result: object, error: object) -> None:
        done.append(time.monotonic())

    for clip in clips[:4]:  # warm
        request = grpcclient.InferInput("audio", [1, clip.size], "FP32")
        request.set_data_from_numpy(clip[None])
        client.infer("emotion", [request])
    started = time.monotonic()
    requests = 0
    while time.monotonic() - started < 20:
        while requests - len(done) < 8:
            request = grpcclient.InferInput("audio", [1, window], "FP32")
            request.set_data_from_numpy(clips[requests % len(clips)][None])
            client.async_infer("emotion", [request], callback=sent)
            requests += 1
        time.sleep(0.002)
    finished = len(done)
    client.close()
    return finished * window_s / (time.monotonic() - started)


def inprocess_window_ms(repository: Path, audio: npt.NDArray[np.float32], window_s: float) -> float:
    """p50 of one window through the served classifier in this process, batch 1, all threads."""
    module = load_served(repository, "cpu")
    run = inprocess_call(module, "cpu")
    window = round(window_s * RATE)
    clips = [audio[start : start + window] for start in range(0, audio.size - window, window)][:8]
    for clip in clips[:2]:
        run([clip])
    times = []
    for clip in clips * 2:
        began = time.perf_counter()
        run([clip])
        times.append(time.perf_counter() - began)
    return float(np.median(times)) * 1000.0


def table(runs: Sequence[LiveRun], bound: float, *, window_s: float, hop_s: float) -> list[str]:
    lines = [
        "| streams | updates | lag p50 ms | lag p99 ms | lag max ms | every lag under one hop |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.streams} | {run.updates} | {run.p50_ms:.0f} | {run.p99_ms:.0f} | {run.max_ms:.0f} | "
            f"{'yes' if run.keeps_up else 'no'}{f' ({run.failures} failed)' if run.failures else ''} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="a cpu export to serve (default: export --random-init base)")
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--hop-s", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="each run's length (default 60)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.6, 0.8, 0.9, 1.0, 1.1])
    parser.add_argument(
        "--aligned", action="store_true", help="start every stream at once (default: spread over one hop)"
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    started = time.monotonic()
    audio = np.concatenate(synthesise(8, sample_rate=RATE, seed=31, min_s=5, max_s=9)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="emotion-live-") as scratch:
        repository = args.repository
        if repository is None:
            repository = Path(scratch) / "model_repository"
            loaded = random_model("base")
            description = describe(
                loaded,
                batching=BatchingSettings(),
                min_duration_s=0.1,
                max_duration_s=30.0,
                stream=StreamSettings(max_streams=256),
            )
            log("exporting the default cpu repository (--random-init base)")
            provenance = export(loaded, repository, "cpu", description, progress=log).provenance
        else:
            from emotion_build.repository.description import Provenance

            provenance = Provenance.from_json((repository / "classifier" / "1" / "export.json").read_text())
        with TritonServer(repository) as server:
            url = server.endpoints.grpc_url
            log("served throughput in windows (the bound)")
            served = served_throughput(url, audio, args.window_s)
            bound = served / (args.window_s / args.hop_s)
            log(f"served {served:.1f} audio-s/s in {args.window_s:g} s windows: bound {bound:.1f} streams")
            runs = []
            for count in [1, *sorted({max(2, round(f * bound)) for f in args.fractions})]:
                log(f"{count} stream(s) for {args.seconds:g} s")
                run = asyncio.run(
                    streams_at_once(
                        url,
                        audio,
                        count,
                        seconds=args.seconds,
                        window_s=args.window_s,
                        hop_s=args.hop_s,
                        aligned=args.aligned,
                    )
                )
                log(f"  {run}")
                runs.append(run)
        log("one window in-process at batch 1 (the latency target's base)")
        window_ms = inprocess_window_ms(repository, audio, args.window_s)
    capacity = max((run.streams for run in runs if run.keeps_up), default=0)
    at_capacity = next((run for run in runs if run.streams == capacity), None)
    single = runs[0]
    target_ms = window_ms + 50.0
    bytes_per_s = RATE * 4
    lines = [
        f"`make bench-live` on {datetime.date.today().isoformat()}, {machine_name('cpu')}; {provenance.source_model}, "
        f"{provenance.dtype} on {provenance.engine}; window {args.window_s:g} s, hop {args.hop_s:g} s; each stream "
        f"sends {CHUNK_S * 1000:.0f} ms chunks of espeak-ng speech at real-time pace for {args.seconds:g} s, "
        + ("all starting at once" if args.aligned else "their starts spread evenly over one hop")
        + " from one asyncio load generator on the same machine; lag: from sending the chunk that completes a "
        f"window to receiving its update. {(time.monotonic() - started) / 60:.1f} min.",
        "",
        *table(runs, bound, window_s=args.window_s, hop_s=args.hop_s),
        "",
        f"- Capacity: **{capacity} streams** kept every update within one hop ({args.hop_s:g} s); the bound from "
        f"the served throughput ({served:.1f} audio-s/s in {args.window_s:g} s windows, 8 requests in flight) is "
        f"{bound:.1f}: {capacity / bound:.0%} of it (target ≥ 80 %: "
        f"{'met' if capacity >= 0.8 * bound else '**not met**'}).",
        f"- Lag at one stream: p50 {single.p50_ms:.0f} ms, p99 {single.p99_ms:.0f} ms"
        + (
            f"; at {capacity} streams p50 {at_capacity.p50_ms:.0f}, p99 {at_capacity.p99_ms:.0f} ms"
            if at_capacity
            else ""
        )
        + f" (target p99 ≤ one window in-process at batch 1, {window_ms:.0f} ms, + 50 ms = {target_ms:.0f} ms: "
        + (
            "met"
            if single.p99_ms <= target_ms and (at_capacity is None or at_capacity.p99_ms <= target_ms)
            else "**not met**"
        )
        + ").",
        f"- Bytes per stream-second: {bytes_per_s / 1024:.0f} KiB of samples (float32 at {RATE} Hz, each sample once), "
        f"against {bytes_per_s * args.window_s / args.hop_s / 1024:.0f} KiB when the client sends every window "
        f"whole ({args.window_s / args.hop_s:g}x).",
        "",
        f"Command: `python benchmarks/live.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
    ]
    body = "\n".join(lines)
    write_section(args.output, "live", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
