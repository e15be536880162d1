"""``emotion-client perf-data``: the first of the README's two load-test lines (perf_analyzer is the second).

The server is asked for its input name, sample rate and duration limits, so the data fits the
model being tested and nothing about it is typed twice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..audio import collect_audio_files
from ..client import EmotionClient
from ..perf_data import load_perf_clips, perf_stream_data, write_perf_data

__all__ = ["add_perf_data_parser", "run_perf_data"]


def add_perf_data_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "perf-data",
        parents=[common],
        help="write perf_analyzer's --input-data from audio files",
        description="Write perf_analyzer's --input-data JSON from audio files or folders (any rate and "
        "channel count), resampled and downmixed as the SDK does, one request per clip in turn. "
        "Reads the input name, rate and limits from the server at --url.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio file or folder")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="JSON", help="file to write")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="data for the live stream model instead: each file one sequence of --chunk-s chunks "
        "(perf_analyzer -m <its stream model> --streaming; `labels --json` names it)",
    )
    parser.add_argument(
        "--chunk-s",
        type=float,
        default=0.1,
        metavar="S",
        help="with --stream: seconds per chunk (default %(default)g)",
    )
    parser.add_argument(
        "--lengths-s",
        type=float,
        nargs="+",
        default=[],
        metavar="S",
        help="cut each file's first S seconds for every S, cycling the lengths (default: whole files)",
    )
    return parser


def run_perf_data(client: EmotionClient, args: argparse.Namespace) -> int:
    files = collect_audio_files(args.paths)
    info = client.model_info()
    clips = load_perf_clips(files, info, args.lengths_s)
    if args.stream:
        live = client.stream_info()
        chunk = round(args.chunk_s * info.sample_rate)
        data = perf_stream_data([clip.samples for clip in clips], live.chunk_input, chunk_samples=chunk)
        args.output.write_text(json.dumps(data))
        print(
            f"wrote {len(clips)} streams from {len(files)} files to {args.output} in {args.chunk_s:g} s "
            f"chunks ({info.sample_rate} Hz, input '{live.chunk_input}'); load-test with:\n"
            f"  perf_analyzer -m {live.model_name} -i grpc -u {client.url} --streaming "
            f"--input-data {args.output} --concurrency-range 1:8"
        )
        return 0
    write_perf_data(args.output, [clip.samples for clip in clips], info.audio_input)
    durations = [clip.duration_s for clip in clips]
    print(
        f"wrote {len(clips)} clips from {len(files)} files to {args.output} "
        f"({min(durations):.2f}-{max(durations):.2f} s, mean {sum(durations) / len(durations):.2f} s, "
        f"{info.sample_rate} Hz, input '{info.audio_input}'); load-test with:\n"
        f"  perf_analyzer -m {info.model_name} -i grpc -u {client.url} --input-data {args.output} "
        "--concurrency-range 1:8"
    )
    return 0
