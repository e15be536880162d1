"""The command line: every command's arguments, and the client they describe."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from pathlib import Path

from .._defaults import (
    AUDIO_FILE_SUFFIXES,
    DEFAULT_CONCURRENCY,
    DEFAULT_HOP_S,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL_NAME,
    DEFAULT_SMOOTH_S,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    DEFAULT_WINDOW_S,
    URL_ENV_VAR,
)
from ..client import EmotionClient
from ..connection import TLSConfig
from ..retry import RetryPolicy
from .live import add_live_parser
from .models import add_model_parsers
from .perf_data import add_perf_data_parser


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument(
        "--url",
        action="append",
        metavar="HOST:PORT",
        help=f"gRPC endpoint; repeat or comma-separate for several replicas (round-robin). "
        f"Default: ${URL_ENV_VAR}, else {DEFAULT_URL}",
    )
    server.add_argument(
        "--model",
        default=DEFAULT_MODEL_NAME,
        help="model name (`models` lists them; default: %(default)s)",
    )
    server.add_argument(
        "--model-version",
        default="",
        metavar="N",
        help="ask for this version of --model only (default: the one the server serves)",
    )
    server.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="deadline of each request attempt in seconds (default: %(default)g)",
    )
    server.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        metavar="N",
        help="extra attempts after UNAVAILABLE, with backoff (default: %(default)d; 0: none)",
    )
    server.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra gRPC header for every request, e.g. an auth token (repeatable)",
    )
    tls = common.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="use TLS (implied by the options below)")
    tls.add_argument("--root-certs", type=Path, metavar="PEM", help="CA certificate(s) to trust")
    tls.add_argument("--client-cert", type=Path, metavar="PEM", help="client certificate for mutual TLS")
    tls.add_argument("--client-key", type=Path, metavar="PEM", help="client private key for mutual TLS")

    parser = argparse.ArgumentParser(
        prog="emotion-client",
        description="Speech emotion recognition with the Triton 'emotion' ensemble.",
        epilog="Exit status: 0 all succeeded, 1 a file failed / not ready / server unusable, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser(
        "classify", parents=[common], help="classify audio files", description="Classify audio files."
    )
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio file or directory")
    classify.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help=f"classify the audio files ({', '.join(sorted(AUDIO_FILE_SUFFIXES))}) under directories",
    )
    classify.add_argument("-k", "--top-k", type=int, metavar="K", help="show only the K best classes")
    output = classify.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object per file (JSON Lines)")
    output.add_argument("--csv", action="store_true", help="CSV with one probability column per label")
    classify.add_argument(
        "-j",
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help="requests in flight (default: %(default)d)",
    )
    progress = classify.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always draw the progress bar on stderr (default: when stderr is a terminal)",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never draw it")

    timeline = commands.add_parser(
        "timeline",
        parents=[common],
        help="emotion over time in a long recording",
        description="Classify overlapping windows of a recording of any length (streamed, not loaded whole).",
    )
    timeline.add_argument("file", type=Path, metavar="FILE", help="audio file")
    timeline.add_argument(
        "--window-s", type=float, default=DEFAULT_WINDOW_S, help="window length (default: %(default)g)"
    )
    timeline.add_argument(
        "--hop-s", type=float, default=DEFAULT_HOP_S, help="window step (default: %(default)g)"
    )
    timeline.add_argument(
        "--smooth-s",
        type=float,
        default=DEFAULT_SMOOTH_S,
        help="smoothing of the per-second track (default: %(default)g)",
    )
    timeline_output = timeline.add_mutually_exclusive_group()
    timeline_output.add_argument("--json", action="store_true", help="segments and per-second track as JSON")
    timeline_output.add_argument("--csv", action="store_true", help="the per-second track as CSV")
    timeline.add_argument(
        "--plot", type=Path, metavar="PNG", help="also draw each class's probability over time"
    )
    timeline.add_argument(
        "-j", "--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N", help="windows in flight"
    )

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="accuracy on labelled audio",
        description="Accuracy, unweighted recall, per-class precision/recall and confusion matrix on "
        "labelled audio: a CSV manifest (path,label) or an IEMOCAP release (SUPERB 4-class protocol).",
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, metavar="CSV", help="CSV with columns path,label")
    source.add_argument("--iemocap", type=Path, metavar="DIR", help="IEMOCAP_full_release folder")
    evaluate.add_argument(
        "--fold", type=int, default=1, help="IEMOCAP session to test on (default: %(default)d)"
    )
    evaluate.add_argument("--report", type=Path, metavar="JSON", help="write the full report as JSON")
    evaluate.add_argument("--confusion-png", type=Path, metavar="PNG", help="draw the confusion matrix")
    evaluate.add_argument(
        "-j", "--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N", help="requests in flight"
    )

    health = commands.add_parser(
        "health",
        parents=[common],
        help="check every endpoint",
        description="Check that every endpoint is live and has the model ready.",
    )
    health.add_argument("--json", action="store_true", help="print a JSON list")

    labels = commands.add_parser(
        "labels",
        parents=[common],
        help="list the model's labels",
        description="List the model's labels, in class-index order.",
    )
    labels.add_argument("--json", action="store_true", help="print the model's settings as JSON")
    return parser, {
        "classify": classify,
        "timeline": timeline,
        "evaluate": evaluate,
        "health": health,
        "labels": labels,
        "perf-data": add_perf_data_parser(commands, common),
        "live": add_live_parser(commands, common),
        **add_model_parsers(commands, common),
    }


def build_client(args: argparse.Namespace) -> EmotionClient:
    urls = args.url or [os.environ.get(URL_ENV_VAR) or DEFAULT_URL]
    headers: dict[str, str] = {}
    for entry in args.header:
        key, sep, value = entry.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--header expects KEY=VALUE, got {entry!r}")
        headers[key.strip()] = value
    tls: TLSConfig | bool | None = None
    if args.root_certs or args.client_cert or args.client_key:
        tls = TLSConfig(
            root_certificates=args.root_certs, client_certificate=args.client_cert, client_key=args.client_key
        )
    elif args.tls:
        tls = True
    return EmotionClient(
        urls,
        model_name=args.model,
        model_version=args.model_version,
        timeout_s=args.timeout,
        retry=RetryPolicy(max_retries=args.retries),
        headers=headers,
        tls=tls,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("emotion-client")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
