"""``emotion-client live``: live audio in, one JSON line per update out, flushed as it arrives.

::

    ffmpeg -i SOURCE -f s16le -ac 1 -ar 16000 - | emotion-client live -
    emotion-client live recording.wav --realtime

``-`` reads raw 16-bit little-endian mono PCM from stdin at ``--rate``; a file (any format the SDK
reads) is streamed block by block, as fast as it is read, or at its own pace with ``--realtime``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import soundfile  # type: ignore[import-untyped, unused-ignore]

from .._defaults import DEFAULT_HOP_S, DEFAULT_SAMPLE_RATE, DEFAULT_WINDOW_S
from ..client import EmotionClient
from ..errors import InvalidAudioError
from ..results import StreamUpdate

__all__ = ["add_live_parser", "pcm_chunks", "run_live"]

BLOCK_S = 0.1
"""Audio read (and, with --realtime, sent) at a time: a tenth of a second, as live sources deliver it."""


def add_live_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "live",
        parents=[common],
        help="classify live audio: an update per hop, as JSON lines",
        description="Stream audio to the server and print one JSON line per update (start_s, end_s, label, "
        "score, scores) as it arrives. SOURCE is - for raw 16-bit little-endian mono PCM on stdin (e.g. "
        "`ffmpeg -i SOURCE -f s16le -ac 1 -ar 16000 - | emotion-client live -`), or an audio file.",
    )
    parser.add_argument("source", metavar="SOURCE", help="- (raw s16le PCM on stdin) or an audio file")
    parser.add_argument(
        "--rate",
        type=int,
        default=DEFAULT_SAMPLE_RATE,
        metavar="HZ",
        help="rate of stdin's PCM (default %(default)d)",
    )
    parser.add_argument(
        "--window-s", type=float, default=DEFAULT_WINDOW_S, help="window (default %(default)g)"
    )
    parser.add_argument(
        "--hop-s", type=float, default=DEFAULT_HOP_S, help="hop, at least 0.25 (default %(default)g)"
    )
    parser.add_argument(
        "--realtime", action="store_true", help="send a file at its own pace, as if it were live"
    )
    return parser


def pcm_chunks(stream: BinaryIO, *, rate: int) -> Iterator[npt.NDArray[np.int16]]:
    """Raw s16le PCM as it arrives, a tenth of a second (or whatever the pipe has) at a time."""
    block = 2 * max(1, round(BLOCK_S * rate))
    carry = b""
    while True:
        data = stream.read1(block) if hasattr(stream, "read1") else stream.read(block)
        if not data:
            break
        data = carry + data
        whole = len(data) - len(data) % 2
        carry = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)


def file_chunks(path: Path, *, realtime: bool) -> tuple[Iterator[npt.NDArray[np.float32]], int]:
    """The file's audio (downmixed) a tenth of a second at a time, paced when `realtime`; and its rate."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError) as error:
        raise InvalidAudioError(f"cannot read audio file '{path}': {error}") from error

    def blocks() -> Iterator[npt.NDArray[np.float32]]:
        started = time.monotonic()
        sent = 0
        for block in soundfile.blocks(
            str(path), blocksize=max(1, round(BLOCK_S * info.samplerate)), dtype="float32", always_2d=True
        ):
            if realtime:
                time.sleep(max(0.0, started + sent / info.samplerate - time.monotonic()))
            sent += block.shape[0]
            yield block.mean(axis=1, dtype=np.float32)

    return blocks(), int(info.samplerate)


def update_dict(update: StreamUpdate) -> dict[str, Any]:
    result = update.classification
    return {
        "start_s": round(update.start_s, 6),
        "end_s": round(update.end_s, 6),
        "label": result.label,
        "score": result.score,
        "scores": {entry.label: entry.score for entry in result.scores},
    }


def run_live(client: EmotionClient, args: argparse.Namespace) -> int:
    if args.source == "-":
        chunks: Iterator[Any] = pcm_chunks(sys.stdin.buffer, rate=args.rate)
        rate = args.rate
    else:
        path = Path(args.source)
        if not path.is_file():
            raise InvalidAudioError(f"{path} is not a file (use - for PCM on stdin)")
        chunks, rate = file_chunks(path, realtime=args.realtime)
    for update in client.stream(chunks, rate, window_s=args.window_s, hop_s=args.hop_s):
        sys.stdout.write(json.dumps(update_dict(update)) + "\n")
        sys.stdout.flush()
    return 0
