"""The commands that ask the server: classify, timeline, evaluate, health and labels."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import soundfile  # type: ignore[import-untyped, unused-ignore]

from ..audio import collect_audio_files
from ..client import EmotionClient
from ..evaluation import compute_report, read_iemocap, read_manifest, save_confusion_png
from ..results import ModelInfo
from ..timeline import save_timeline_png, timeline_to_dict
from .output import format_table, health_dict, info_dict, render_rows, write_csv, write_json_lines, yes_no
from .progress import ProgressBar
from .status import EXIT_FAILED, EXIT_OK, UsageError


def classify(client: EmotionClient, args: argparse.Namespace) -> int:
    try:
        files = collect_audio_files(args.paths, folders=args.recursive)
    except ValueError as error:
        raise UsageError(str(error)) from error
    info = client.model_info()
    show_progress = args.progress if args.progress is not None else (len(files) > 1 and isatty(sys.stderr))
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
        write_json_lines(items, sys.stdout)
    elif args.csv:
        write_csv(items, info, sys.stdout)
    else:
        sys.stdout.write(format_table(items))
    failed = sum(not item.ok for item in items)
    warn_untrained(info)
    print(
        f"emotion-client: {len(items) - failed} of {len(items)} files classified"
        + (f", {failed} failed" if failed else "")
        + f" in {elapsed_s:.2f} s",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed else EXIT_OK


def timeline(client: EmotionClient, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise UsageError(f"{args.file} is not a file")
    total_s = _duration_s(args.file)
    bar = (
        ProgressBar(max(1, round(total_s)), stream=sys.stderr, label="timeline (s)")
        if isatty(sys.stderr) and total_s
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
        sys.stdout.write(render_rows(rows))
        shares = {label: sum(p.label == label for p in timeline.track) for label in timeline.labels}
        summary = ", ".join(f"{label} {100 * n / len(timeline.track):.0f}%" for label, n in shares.items())
        sys.stdout.write(f"\nper-second share of top label: {summary}\n")
    if args.plot is not None:
        save_timeline_png(timeline, args.plot)
    warn_untrained(client.model_info())
    print(
        f"emotion-client: {timeline.duration_s:.1f} s of audio in {len(timeline.segments)} windows, "
        f"{elapsed_s:.2f} s ({timeline.duration_s / max(elapsed_s, 1e-9):.1f} audio-s/s)",
        file=sys.stderr,
    )
    return EXIT_OK


def evaluate(client: EmotionClient, args: argparse.Namespace) -> int:
    try:
        clips = read_manifest(args.manifest) if args.manifest else read_iemocap(args.iemocap, fold=args.fold)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from e
    if not clips:
        raise UsageError("no labelled clips found")
    info = client.model_info()
    unknown = sorted({clip.label for clip in clips} - set(info.labels))
    if unknown:
        raise UsageError(f"labels {unknown} are not among the model's labels {list(info.labels)}")
    bar = ProgressBar(len(clips), stream=sys.stderr) if isatty(sys.stderr) else None
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
    warn_untrained(info)
    return EXIT_FAILED if report.failures else EXIT_OK


def _duration_s(path: Path) -> float:
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError):
        return 0.0  # the client names the problem when it reads the file
    return float(info.frames) / info.samplerate if info.samplerate else 0.0


def warn_untrained(info: ModelInfo) -> None:
    if info.untrained:
        print(
            "emotion-client: warning: the server's model is UNTRAINED (random weights); "
            "these predictions are meaningless",
            file=sys.stderr,
        )


def health(client: EmotionClient, args: argparse.Namespace) -> int:
    report = client.health(timeout_s=min(args.timeout, 10.0))
    if args.json:
        json.dump([health_dict(entry) for entry in report], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        rows = [("ENDPOINT", "LIVE", "READY", "DETAIL")]
        rows += [
            (e.url, yes_no(e.live), yes_no(e.ready), e.error or f"model '{client.model_name}' ready")
            for e in report
        ]
        sys.stdout.write(render_rows(rows))
    return EXIT_OK if all(entry.ready for entry in report) else EXIT_FAILED


def labels(client: EmotionClient, args: argparse.Namespace) -> int:
    info = client.model_info()
    if args.json:
        json.dump(info_dict(info), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(f"{label}\n" for label in info.labels))
    return EXIT_OK


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
