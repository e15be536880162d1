"""Timeline throughput and client memory on a one-hour recording, through the real server.

Builds an hour of espeak-ng speech and silences (written block by block), exports a CPU
repository, starts the pip tritonserver and runs `emotion-client timeline` on the file in a child
process, whose peak resident memory is read from the kernel when it exits.

    python benchmarks/timeline_hour.py                    # tiny random model: the pipeline's own cost
    python benchmarks/timeline_hour.py --random-init base # full-size wav2vec2-base on this machine
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr

from emotion_build.server.launcher import TritonServer

SENTENCES = (
    "Thanks for joining the call today, let's go through the numbers.",
    "I'm really not happy with how the last release went.",
    "That is fantastic, congratulations to the whole team!",
    "I'm sorry to hear that, it must have been a difficult week.",
)


_CLIENT_WITH_PEAK_RSS = """
import resource, sys
from emotion_client.cli import main
status = main(sys.argv[1:])
print(f"peak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(status)
"""
"""The CLI, reporting its own peak resident memory (the kernel's high-water mark) on exit."""


def one_hour_recording(path: Path, minutes: float, rate: int = 16000) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        pieces = []
        for index, text in enumerate(SENTENCES):
            wav = Path(scratch) / f"{index}.wav"
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
            audio, source_rate = soundfile.read(wav, dtype="float32")
            pieces.append(soxr.resample(audio, source_rate, rate).astype(np.float32))
    rng = np.random.default_rng(0)
    written = 0
    target = int(minutes * 60 * rate)
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        while written < target:
            block = np.concatenate(
                [pieces[rng.integers(len(pieces))], np.zeros(int(rng.uniform(0.2, 2.0) * rate), np.float32)]
            )
            block = block[: target - written]
            handle.write(block)
            written += block.size
    return written / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random-init", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--hop-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="timeline-bench-") as scratch:
        root = Path(scratch)
        recording = root / "hour.wav"
        duration_s = one_hour_recording(recording, args.minutes)
        print(f"recording: {duration_s:.0f} s, {recording.stat().st_size / 1e6:.0f} MB on disk", file=sys.stderr)
        repository = root / "repository"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "emotion_build",
                "export",
                "--random-init",
                args.random_init,
                "--target",
                "cpu",
                "--output",
                str(repository),
            ],
            check=True,
            capture_output=True,
        )
        with TritonServer(repository) as server:
            started = time.perf_counter()
            run = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CLIENT_WITH_PEAK_RSS,
                    "timeline",
                    str(recording),
                    "--json",
                    "--url",
                    server.endpoints.grpc_url,
                    "--window-s",
                    str(args.window_s),
                    "--hop-s",
                    str(args.hop_s),
                    "-j",
                    str(args.concurrency),
                ],
                capture_output=True,
                text=True,
            )
            elapsed_s = time.perf_counter() - started
        if run.returncode != 0:
            raise SystemExit(run.stderr)
        if "peak_rss_kb=" not in run.stderr:
            raise SystemExit(f"the client did not report its memory:\n{run.stderr[-2000:]}")
        peak_mb = float(run.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0]) / 1024
        windows = run.stdout.count('"start_s"') - int(np.ceil(duration_s))
    print(
        f"\n| model | audio | windows ({args.window_s:g} s, hop {args.hop_s:g} s) | wall time | "
        "audio-s per s | client peak RSS |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {args.random_init} (random weights) | {duration_s / 60:.0f} min | {windows} | {elapsed_s:.1f} s | "
        f"{duration_s / elapsed_s:.0f} | {peak_mb:.0f} MB |"
    )
    print(
        "\n(peak RSS of the emotion-client process, Python and NumPy included; "
        f"the whole recording decoded would be {duration_s * 16000 * 4 / 1e6:.0f} MB)"
    )


if __name__ == "__main__":
    main()
