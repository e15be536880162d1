"""`make loadtest`: perf_analyzer on real speech against a running server, with its table, a CSV and a plot.

    make loadtest URL=localhost:8001 CONCURRENCY=1:8:1 DURATION_MS=5000 SAMPLES=samples
    python benchmarks/loadtest.py --url localhost:8001 --concurrency 1:8:1 --samples samples --output loadtest

The measurement is perf_analyzer's own (time windows, stable when the last three agree within
--stability percent on throughput and latency: the average, or the --percentile one); this script only makes its input
data with `emotion-client perf-data`'s code, runs it, and draws throughput and p99 from its CSV.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from emotion_build.server.perf_analyzer import PerfRow, perf_analyzer_command, perf_analyzer_env, read_perf_csv
from emotion_client import EmotionClient
from emotion_client.audio import collect_audio_files
from emotion_client.perf_data import load_perf_clips, write_perf_data

__all__ = ["concurrency_levels", "main", "plot_loadtest"]


def concurrency_levels(text: str) -> list[int]:
    """perf_analyzer's `start:end[:step]` as the levels it visits; refused here rather than mid-run."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected START:END[:STEP] or one level, got {text!r}")
    numbers = [int(part) for part in parts]
    start, end, step = numbers[0], numbers[min(1, len(numbers) - 1)], numbers[2] if len(numbers) == 3 else 1
    if not 1 <= start <= end or step < 1:
        raise argparse.ArgumentTypeError(f"expected 1 <= START <= END and STEP >= 1, got {text!r}")
    return list(range(start, end + 1, step))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    with EmotionClient(args.url, model_name=args.model) as client:
        info = client.model_info()
    clips = load_perf_clips(collect_audio_files(args.samples), info, args.lengths_s)
    data = write_perf_data(args.output / "clips.json", [clip.samples for clip in clips], info.audio_input)
    mean_s = sum(clip.duration_s for clip in clips) / len(clips)
    report = args.output / "perf.csv"
    report.unlink(missing_ok=True)
    command = perf_analyzer_command(
        args.url,
        input_data=data,
        concurrency=args.concurrency,
        measurement_interval_ms=args.duration_ms,
        model=args.model,
        extra_args=[
            *(["--percentile", str(args.percentile)] if args.percentile > 0 else []),
            "--stability-percentage",
            str(args.stability),
            "--max-trials",
            str(args.max_trials),
            "-f",
            str(report),
        ],
    )
    print(f"{len(clips)} clips, mean {mean_s:.2f} s, in {data}\n$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, env=perf_analyzer_env(), stdout=sys.stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0 or not report.exists():
        print(
            f"loadtest: perf_analyzer exited with status {result.returncode} (its reason is above). When it found "
            "no stable measurement, lengthen DURATION_MS, raise MAX_TRIALS, or allow more STABILITY (percent)",
            file=sys.stderr,
        )
        return result.returncode or 1
    rows = read_perf_csv(report.read_text())
    sys.stdout.write(format_rows(rows, mean_s, args.percentile))
    figure = args.output / "loadtest.png"
    plot_loadtest(rows, mean_s, figure, title=f"{info.model_name} at {args.url}, {len(clips)} clips of {mean_s:.2f} s")
    print(f"wrote {report} and {figure}")
    return 0


def format_rows(rows: Sequence[PerfRow], mean_s: float, percentile: int) -> str:
    """The CSV's points in milliseconds, with the audio seconds served per second beside requests per second."""
    lines = [f"{'concurrency':>11} {'infer/s':>9} {'audio-s/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"]
    lines += [
        f"{r.concurrency:>11} {r.inferences_per_s:>9.1f} {r.inferences_per_s * mean_s:>9.1f} "
        f"{r.p50_ms:>8.1f} {r.p90_ms:>8.1f} {r.p99_ms:>8.1f}"
        for r in rows
    ]
    basis = f"p{percentile}" if percentile > 0 else "the average"
    lines.append(f"(windows stable on {basis} latency; audio-s/s = infer/s x mean clip length)")
    return "".join(line + "\n" for line in lines)


def plot_loadtest(rows: Sequence[PerfRow], mean_s: float, path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.concurrency for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(xs, [r.inferences_per_s for r in rows], "o-", label="requests (clips)/s")
    left.plot(xs, [r.inferences_per_s * mean_s for r in rows], "s--", label="audio seconds/s")
    left.set_ylabel("throughput per second")
    right.plot(xs, [r.p99_ms for r in rows], "o-", label="p99")
    right.plot(xs, [r.p50_ms for r in rows], "s--", label="p50")
    right.set_ylabel("latency (ms)")
    for axis in (left, right):
        axis.set_xlabel("concurrency (requests in flight)")
        axis.set_xticks(xs)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8001", help="the server's gRPC HOST:PORT (default: %(default)s)")
    parser.add_argument("--model", default="emotion", help="the model to load (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=concurrency_levels, default="1:8:1", help="START:END[:STEP] (default: %(default)s)"
    )
    parser.add_argument(
        "--duration-ms", type=int, default=5000, help="each measurement window, in ms (default: %(default)s)"
    )
    parser.add_argument("--samples", type=Path, nargs="+", default=[Path("samples")], help="audio files or folders")
    parser.add_argument("--lengths-s", type=float, nargs="*", default=[], help="cut clips to these lengths in turn")
    parser.add_argument(
        "--percentile", type=int, default=-1, help="latency percentile the windows must agree on (-1: the average)"
    )
    parser.add_argument("--stability", type=float, default=10, help="allowed spread of 3 windows, percent")
    parser.add_argument("--max-trials", type=int, default=10, help="windows per level before giving up")
    parser.add_argument("--output", type=Path, default=Path("loadtest"), help="folder for clips.json, CSV and PNG")
    return parser


if __name__ == "__main__":
    sys.exit(main())
