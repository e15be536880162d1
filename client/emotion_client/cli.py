"""``emotion-client``: classify audio files, check health and list labels from the command line.

::

    emotion-client classify PATH... [--recursive] [--top-k K] [--json | --csv] [--concurrency N]
    emotion-client timeline FILE [--window-s S] [--hop-s S] [--json | --csv] [--plot OUT.png]
    emotion-client evaluate (--manifest CSV | --iemocap DIR [--fold N]) [--report OUT.json]
                            [--confusion-png OUT.png]
    emotion-client health [--json]
    emotion-client labels [--json]
    emotion-client perf-data PATH... -o CLIPS.json [--lengths-s S...]
    emotion-client live (- | FILE) [--rate HZ] [--window-s S] [--hop-s S] [--realtime]

Every command takes ``--url`` (repeatable, or a comma list: requests go round-robin),
``--timeout``, ``--retries``, ``--header KEY=VALUE``, ``--model`` and the TLS options.
Results go to stdout; the progress bar, warnings and errors to stderr.

Exit status: 0 when everything succeeded, 1 when any file failed (or, for ``health``, any endpoint
is not ready, or the server could not be used at all), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import soundfile  # type: ignore[import-untyped, unused-ignore]

from ._defaults import (
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
from ._live_cli import add_live_parser, run_live
from ._perf_data_cli import add_perf_data_parser, run_perf_data
from ._progress import ProgressBar
from .audio import find_audio_files
from .client import EmotionClient
from .connection import TLSConfig
from .errors import EmotionClientError
from .evaluation import compute_report, read_iemocap, read_manifest, save_confusion_png
from .results import BatchItem, EndpointHealth, ModelInfo
from .retry import RetryPolicy
from .timeline import save_timeline_png, timeline_to_dict

__all__ = ["main"]

EXIT_OK = 0
"""Everything succeeded."""
EXIT_FAILED = 1
"""Some input failed, an endpoint is not ready, or the server could not be used."""
EXIT_USAGE = 2
"""Bad arguments (argparse's own status for them)."""
_EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """A problem with the arguments found after parsing (e.g. a directory without --recursive)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    parser, commands = _parser()
    args = parser.parse_args(argv)
    command = commands[args.command]
    try:
        client = _client(args)
    except (ValueError, TypeError) as e:
        command.error(str(e))
    try:
        with client:
            handler = {
                "classify": _classify,
                "timeline": _timeline,
                "evaluate": _evaluate,
                "health": _health,
                "labels": _labels,
                "perf-data": run_perf_data,
                "live": run_live,
            }[args.command]
            return handler(client, args)
    except _UsageError as e:
        command.error(str(e))
    except EmotionClientError as e:
        print(f"emotion-client: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:  # an option the SDK refused, e.g. --top-k 0 or --concurrency 0
        command.error(str(e))
    except KeyboardInterrupt:
        print("emotion-client: interrupted", file=sys.stderr)
        return _EXIT_INTERRUPTED


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument(
        "--url",
        action="append",
        metavar="HOST:PORT",
        help=f"gRPC endpoint; repeat or comma-separate for several replicas (round-robin). "
        f"Default: ${URL_ENV_VAR}, else {DEFAULT_URL}",
    )
    server.add_argument("--model", default=DEFAULT_MODEL_NAME, help="ensemble name (default: %(default)s)")
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
    }


def _client(args: argparse.Namespace) -> EmotionClient:
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
        timeout_s=args.timeout,
        retry=RetryPolicy(max_retries=args.retries),
        headers=headers,
        tls=tls,
    )


def _classify(client: EmotionClient, args: argparse.Namespace) -> int:
    files = _collect_files(args.paths, recursive=args.recursive)
    info = client.model_info()
    show_progress = args.progress if args.progress is not None else (len(files) > 1 and _isatty(sys.stderr))
    bar = ProgressBar(len(files), stream=sys.stderr) if show_progress else None
    started = time.perf_counter()
    try:
        items = client.classify_many(
            [str(path) for path in files], concurrency=args.concurrency, top_k=args.top_k, on_progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
    elapsed_s = time.perf_counter() - started
    if args.json:
        _write_json_lines(items, sys.stdout)
    elif args.csv:
        _write_csv(items, info, sys.stdout)
    else:
        sys.stdout.write(format_table(items))
    failed = sum(not item.ok for item in items)
    _warn_untrained(info)
    print(
        f"emotion-client: {len(items) - failed} of {len(items)} files classified"
        + (f", {failed} failed" if failed else "")
        + f" in {elapsed_s:.2f} s",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed else EXIT_OK


def _timeline(client: EmotionClient, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise _UsageError(f"{args.file} is not a file")
    total_s = _duration_s(args.file)
    bar = (
        ProgressBar(max(1, round(total_s)), stream=sys.stderr, label="timeline (s)")
        if _isatty(sys.stderr) and total_s
        else None
    )
    started = time.perf_counter()
    try:
        timeline = client.classify_timeline(
            str(args.file),
            window_s=args.window_s,
            hop_s=args.hop_s,
            smooth_s=args.smooth_s,
            concurrency=args.concurrency,
            on_progress=None if bar is None else (lambda done_s: bar.update(round(done_s))),
        )
    finally:
        if bar is not None:
            bar.close()
    elapsed_s = time.perf_counter() - started
    if args.json:
        json.dump(timeline_to_dict(timeline), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["start_s", "end_s", "label", *timeline.labels])
        for point in timeline.track:
            writer.writerow(
                [
                    f"{point.start_s:g}",
                    f"{point.end_s:g}",
                    point.label,
                    *(f"{s.score:.6f}" for s in point.scores),
                ]
            )
    else:
        rows = [("START", "END", "LABEL", "SCORE")]
        rows += [(f"{s.start_s:.1f}", f"{s.end_s:.1f}", s.label, f"{s.score:.3f}") for s in timeline.segments]
        sys.stdout.write(_render_rows(rows))
        shares = {label: sum(p.label == label for p in timeline.track) for label in timeline.labels}
        summary = ", ".join(f"{label} {100 * n / len(timeline.track):.0f}%" for label, n in shares.items())
        sys.stdout.write(f"\nper-second share of top label: {summary}\n")
    if args.plot is not None:
        save_timeline_png(timeline, args.plot)
    _warn_untrained(client.model_info())
    print(
        f"emotion-client: {timeline.duration_s:.1f} s of audio in {len(timeline.segments)} windows, "
        f"{elapsed_s:.2f} s ({timeline.duration_s / max(elapsed_s, 1e-9):.1f} audio-s/s)",
        file=sys.stderr,
    )
    return EXIT_OK


def _evaluate(client: EmotionClient, args: argparse.Namespace) -> int:
    try:
        clips = read_manifest(args.manifest) if args.manifest else read_iemocap(args.iemocap, fold=args.fold)
    except (OSError, ValueError) as e:
        raise _UsageError(str(e)) from e
    if not clips:
        raise _UsageError("no labelled clips found")
    info = client.model_info()
    unknown = sorted({clip.label for clip in clips} - set(info.labels))
    if unknown:
        raise _UsageError(f"labels {unknown} are not among the model's labels {list(info.labels)}")
    bar = ProgressBar(len(clips), stream=sys.stderr) if _isatty(sys.stderr) else None
    try:
        items = client.classify_many(
            [str(c.path) for c in clips], concurrency=args.concurrency, on_progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
    scored = [(clip, item) for clip, item in zip(clips, items, strict=True) if item.result is not None]
    report = compute_report(
        [clip.label for clip, _ in scored],
        [item.result.label for _, item in scored if item.result is not None],
        labels=info.labels,
        failures=[
            (str(clip.path), str(item.error)) for clip, item in zip(clips, items, strict=True) if item.error
        ],
    )
    sys.stdout.write(report.format_table() + "\n")
    if args.report is not None:
        args.report.write_text(report.to_json())
    if args.confusion_png is not None:
        save_confusion_png(report, args.confusion_png)
    _warn_untrained(info)
    return EXIT_FAILED if report.failures else EXIT_OK


def _duration_s(path: Path) -> float:
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError):
        return 0.0  # the client names the problem when it reads the file
    return float(info.frames) / info.samplerate if info.samplerate else 0.0


def _warn_untrained(info: ModelInfo) -> None:
    if info.untrained:
        print(
            "emotion-client: warning: the server's model is UNTRAINED (random weights); "
            "these predictions are meaningless",
            file=sys.stderr,
        )


def _health(client: EmotionClient, args: argparse.Namespace) -> int:
    report = client.health(timeout_s=min(args.timeout, 10.0))
    if args.json:
        json.dump([_health_dict(entry) for entry in report], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        rows = [("ENDPOINT", "LIVE", "READY", "DETAIL")]
        rows += [
            (e.url, _yes_no(e.live), _yes_no(e.ready), e.error or f"model '{client.model_name}' ready")
            for e in report
        ]
        sys.stdout.write(_render_rows(rows))
    return EXIT_OK if all(entry.ready for entry in report) else EXIT_FAILED


def _labels(client: EmotionClient, args: argparse.Namespace) -> int:
    info = client.model_info()
    if args.json:
        json.dump(_info_dict(info), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(f"{label}\n" for label in info.labels))
    return EXIT_OK


def _collect_files(paths: Sequence[Path], *, recursive: bool) -> list[Path]:
    """Files named on the command line, plus the audio files under directories with ``--recursive``."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            if not recursive:
                raise _UsageError(
                    f"'{path}' is a directory; pass --recursive to classify the audio files in it"
                )
            found = find_audio_files(path)
            if not found:
                print(f"emotion-client: warning: no audio files under '{path}'", file=sys.stderr)
            files.extend(found)
        else:
            files.append(path)  # a missing or unreadable file becomes that file's error
    if not files:
        raise _UsageError("no audio files to classify")
    return files


def format_table(items: Sequence[BatchItem]) -> str:
    """The default output: one aligned row per file, failures included with their reason."""
    rows = [("FILE", "LABEL", "SCORE", "ALL SCORES")]
    for item in items:
        name = str(item.source)
        if item.result is not None:
            scores = "  ".join(f"{s.label} {s.score:.3f}" for s in item.result.scores)
            rows.append((name, item.result.label, f"{item.result.score:.3f}", scores))
        else:
            rows.append((name, "ERROR", "-", f"{type(item.error).__name__}: {item.error}"))
    return _render_rows(rows)


def _render_rows(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]
    return "".join(line.rstrip() + "\n" for line in lines)


def _item_dict(item: BatchItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(item.source)}
    if item.result is not None:
        entry["label"] = item.result.label
        entry["score"] = item.result.score
        entry["scores"] = [{"label": s.label, "score": s.score} for s in item.result.scores]
        entry["untrained"] = item.result.untrained
    else:
        entry["error"] = {"type": type(item.error).__name__, "message": str(item.error)}
    return entry


def _write_json_lines(items: Sequence[BatchItem], stream: TextIO) -> None:
    for item in items:
        stream.write(json.dumps(_item_dict(item)) + "\n")


def _write_csv(items: Sequence[BatchItem], info: ModelInfo, stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["path", "label", "score", *info.labels, "error"])
    for item in items:
        if item.result is not None:
            by_label = {s.label: f"{s.score:.6f}" for s in item.result.scores}
            writer.writerow(
                [
                    str(item.source),
                    item.result.label,
                    f"{item.result.score:.6f}",
                    *(by_label.get(label, "") for label in info.labels),
                    "",
                ]
            )
        else:
            error = f"{type(item.error).__name__}: {item.error}"
            writer.writerow([str(item.source), "", "", *("" for _ in info.labels), error])


def _health_dict(entry: EndpointHealth) -> dict[str, Any]:
    return {"url": entry.url, "live": entry.live, "ready": entry.ready, "error": entry.error}


def _info_dict(info: ModelInfo) -> dict[str, Any]:
    return {
        "model_name": info.model_name,
        "labels": list(info.labels),
        "sample_rate": info.sample_rate,
        "min_duration_s": info.min_duration_s,
        "max_duration_s": info.max_duration_s,
        "untrained": info.untrained,
    }


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _version() -> str:
    try:
        return importlib.metadata.version("emotion-client")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
