"""The command line of `benchmarks/throughput.py`: its flags and their defaults per device, and what
becomes of a run (the markdown section, the plot, the --json file)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from interleaved import MIN_PAIRS

from emotion_build.model.families import FAMILY_NAMES

from .plot import plot
from .progress import log
from .report import markdown
from .results import Run
from .run import measured, tuned
from .sections import REPO_ROOT, write_section


def parse_args(argv: Sequence[str] | None, *, description: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or directory (default: random-init wav2vec2-base)")
    parser.add_argument(
        "--random-init",
        choices=("tiny", "base", "large"),
        default="base",
        help="without --model (large: the stable-layer-norm layout of wav2vec2-large / XLSR-53)",
    )
    parser.add_argument(
        "--family", choices=FAMILY_NAMES, default="wav2vec2", help="architecture of --random-init (docs/families.md)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short windows and fewer points (about 14 min on 2 CPU cores)"
    )
    parser.add_argument("--tune", action="store_true", help="only sweep dynamic-batching settings (a server each)")
    parser.add_argument("--tune-only", type=int, nargs="+", help="indices of the tuning candidates to run")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda: where HF, the in-process module and the served classifier run"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        help="weights of the exported model.pt (default: fp16 on cuda; on a CPU auto, as `export` picks: int8 "
        "products and bf16 where the CPU computes them natively, bf16 where only that, else fp32)",
    )
    parser.add_argument("--repository", type=Path, help="an exported repository to use instead of exporting one")
    parser.add_argument(
        "--server-url", help="benchmark this running server (e.g. the GPU container) instead of starting one"
    )
    parser.add_argument(
        "--workloads", nargs="+", default=["1s", "4s", "10s", "mixed"], choices=["1s", "4s", "10s", "mixed"]
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="served concurrency sweep (default 1 2 4 8; cuda 1 8 32 128)"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", help="in-process batch sizes (default 1 2 4 8; cuda 1 8 32 64)"
    )
    parser.add_argument(
        "--max-batch-audio-s", type=float, help="skip in-process batches holding more audio (default 40; cuda 700)"
    )
    parser.add_argument("--hf-batch-size", type=int, help="the HF pipeline's batch_size (default 4; cuda 16)")
    parser.add_argument(
        "--hf-malloc",
        choices=("defaults", "runner"),
        default="defaults",
        help="malloc of the HF pipeline's process: glibc's defaults, as the model card's users run it, or the "
        "cpu runner's setting that keeps freed memory (to see how much of a difference is the allocator)",
    )
    parser.add_argument("--point-s", type=float, help="seconds measured per point (default 6, quick 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of each system's best setting and the one beside it, measured in turn, for the ratios "
        "(default 3, quick 1; 0: none)",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=["hf", "hf-bf16", "torchscript", "served", "sdk", "latency-first", "peers"],
    )
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, help="default docs/benchmarks.png (cuda: docs/benchmarks-gpu.png)")
    parser.add_argument("--json", type=Path, help="also write every point as JSON here")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="SAVED_JSON",
        help="measure nothing: make the tables of a run saved with --json again, into --output "
        "(and the plot, where --plot is given)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return args
    cuda = args.device.startswith("cuda")
    if cuda:
        args.concurrency = args.concurrency or ([1, 32] if args.quick else [1, 8, 32, 128])
        args.batch_sizes = args.batch_sizes or ([1, 32] if args.quick else [1, 8, 32, 64])
    args.concurrency = args.concurrency or ([1, 4] if args.quick else [1, 2, 4, 8])
    args.batch_sizes = args.batch_sizes or ([1, 4] if args.quick else [1, 2, 4, 8])
    args.max_batch_audio_s = args.max_batch_audio_s or (700.0 if cuda else 40.0)
    args.hf_batch_size = args.hf_batch_size or (16 if cuda else 4)
    args.dtype = args.dtype or ("fp16" if cuda else "auto")
    args.plot = args.plot or REPO_ROOT / "docs" / ("benchmarks-gpu.png" if cuda else "benchmarks.png")
    args.point_s = args.point_s or (2.0 if args.quick else 6.0)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 0:
        parser.error("--rounds must be 0 or more")
    args.min_pairs = 4 if args.quick else MIN_PAIRS  # fewest c=1 pairs per workload (10 s clips: ~5 s a pair)
    return args


def published(run: Run, output: Path, plot_path: Path | None) -> str:
    """Write a run's tables into its section of `output` (and its plot, where a path is given); returns the tables."""
    body = markdown(run)
    write_section(output, run.section, body)
    if plot_path is not None:
        plot(run.points, run.workload_names, plot_path, f"{run.context.machine} — {run.context.model}")
    return body


def main(argv: Sequence[str] | None = None, *, description: str | None = None) -> int:
    """`description`: the --help text above the flags (throughput.py's docstring)."""
    args = parse_args(argv, description=description)
    if args.render is not None:
        print(published(Run.from_json(args.render.read_text()), args.output, args.plot))
        return 0
    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.dtype == "fp16" and not cuda:
        print("error: --dtype fp16 is for --device cuda (on a CPU half precision is slower)", file=sys.stderr)
        return 2
    if args.tune:
        print(tuned(args))
        return 0
    run = measured(args, argv, started=started)
    body = published(run, args.output, args.plot)
    if args.json:
        args.json.write_text(run.to_json())
    print(body)
    log(f"wrote {args.output} and {args.plot} in {run.context.wall_min:.1f} min")
    return 0
