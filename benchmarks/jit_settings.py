"""Where the exported classifier's time goes on one device, and which TorchScript settings help.

The served GPU classifier showed p99 latencies of seconds at high concurrency while its batches
take tens of milliseconds (docs/benchmarks.md, "GPU"). Two suspects: TorchScript's profiling
executor re-optimising the graph for every new input shape it meets (ragged batching makes a new
shape of nearly every batch), and kernels that run far under the device's rates. This script
times the exported `model.pt` in-process on device-resident random audio (no normalisation, no
host copies: the device's own ceiling) under each setting Triton's libtorch backend exposes as a
config parameter, each in its own process since the settings are process-wide:

- steady throughput per batch shape (batch x clip length), after warm-up;
- a churn run: one seeded sequence of 24 batches of random size and random clip lengths, twice.
  The first pass meets every shape for the first time, the second does not: their difference is
  what new shapes cost, and the first pass's worst call is the stall a client sees;
- with --profile, the kernels that take the most device time in one batch (default settings).

Besides the settings, `native-convs` and `sdpa` run the module traced another way (the cpu
target's convolutions; sdpa attention instead of the eager attention the export traces), `eager`
the same module un-traced and `hf-eager` the plain Hugging Face model on a padded batch, so
tracing itself and the ragged masking can be told apart.

    python benchmarks/jit_settings.py --device cuda --profile     # on a GPU machine, about 3 min
    python benchmarks/jit_settings.py --quick                     # CPU, small shapes, a few minutes

On CUDA the table goes between the `jit-gpu` markers of docs/benchmarks.md, on a CPU between
`jit` markers (appended when missing).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from speed.context import machine_name
from speed.sections import REPO_ROOT, write_section
from torch import nn

from emotion_build.export.tracing import conv_form_for, trace
from emotion_build.model.batched_classifier import CONV_FORMS, RaggedEmotionClassifier
from emotion_build.model.loading import LoadedModel, random_model

RATE = 16000
VARIANTS: dict[str, str] = {
    "default": "profiling executor, tensor-expression fuser (TorchScript's defaults)",
    "no-fuser": "ENABLE_TENSOR_FUSER=false",
    "legacy-executor": "ENABLE_JIT_EXECUTOR=false (no per-shape profiling)",
    "no-optimize": "DISABLE_OPTIMIZED_EXECUTION=true",
    "cudnn-benchmark": "defaults + cuDNN autotuning (no libtorch-backend parameter)",
    "native-convs": "defaults, cuDNN convolutions (the cpu target's form) instead of matmul",
    "sdpa": "defaults, the encoder's attention traced as sdpa instead of HF's eager attention",
    "eager": "the same module un-traced",
    "hf-eager": "Hugging Face model, padded batch, sdpa attention",
}
SHAPES = {"cuda": [(1, 4.0), (32, 4.0), (64, 4.0), (16, 10.0), (64, 10.0), (64, 1.0)], "cpu": [(1, 1.0), (4, 1.0)]}
QUICK_SHAPES = {"cuda": [(32, 4.0), (64, 10.0)], "cpu": [(1, 1.0)]}
CHURN = {"cuda": (24, 32, 10.0), "cpu": (6, 4, 3.0)}
"""batches, largest batch, longest clip (s) of the churn sequence."""


TRACED_FILES = {"native-convs": "native.pt", "sdpa": "sdpa.pt"}
"""Variants that run a module traced differently from the default one (model.pt)."""


def with_attention(loaded: LoadedModel, implementation: str) -> LoadedModel:
    """A copy whose encoder layers run `implementation` (the export traces HF's eager attention)."""
    model = copy.deepcopy(loaded.model)
    model.config._attn_implementation = implementation
    return dataclasses.replace(loaded, model=model)


def apply_setting(variant: str) -> None:
    """The process-wide switches behind the libtorch backend's parameters of the same names."""
    if variant == "no-fuser":
        torch._C._jit_set_texpr_fuser_enabled(False)
    elif variant == "legacy-executor":
        torch._C._jit_set_profiling_executor(False)
    elif variant == "no-optimize":
        torch._C._set_graph_executor_optimize(False)
    elif variant == "cudnn-benchmark":
        torch.backends.cudnn.benchmark = True


def ragged_batch(lengths: Sequence[int], device: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.randn(sum(lengths), generator=generator).to(device)
    ends = torch.tensor(lengths, dtype=torch.int64).cumsum(0).to(torch.int32).to(device)
    return flat, ends


def padded_batch(lengths: Sequence[int], device: str, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    batch = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        batch[row, :length] = torch.randn(length, generator=generator)
    return batch.to(device=device, dtype=dtype)


def runner(variant: str, model_file: Path, args: argparse.Namespace) -> Callable[[Sequence[int]], Any]:
    """A call that runs one batch of the given clip lengths on inputs made before the clock starts."""
    device, dtype = args.device, torch.float16 if args.dtype == "fp16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    if variant == "hf-eager":
        model = with_attention(random_model(args.random_init), "sdpa").model
        nn.Module.to(model, device=device, dtype=dtype)  # in place; transformers' own `to` wrapper confuses mypy

        def hf(lengths: Sequence[int]) -> Any:
            batch = padded_batch(lengths, device, generator, dtype)
            return lambda: model(batch).logits

        return hf
    if variant == "eager":
        loaded = random_model(args.random_init)
        nn.Module.to(loaded.model, dtype=dtype)
        module: Any = RaggedEmotionClassifier(loaded.model, args.conv_form).eval().to(device)
    else:
        model_file = model_file.with_name(TRACED_FILES.get(variant, model_file.name))
        module = torch.jit.load(str(model_file), map_location=device).eval()  # type: ignore[no-untyped-call]

    def ragged(lengths: Sequence[int]) -> Any:
        flat, ends = ragged_batch(lengths, device, generator)
        return lambda: module(flat, ends)

    return ragged


def timed(call: Callable[[], Any], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def child(variant: str, model_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    apply_setting(variant)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    prepare = runner(variant, model_file, args)
    result: dict[str, Any] = {"variant": variant, "steady": {}}
    result["first_call_ms"] = 1000 * timed(prepare([RATE]), args.device)
    for size, seconds in (QUICK_SHAPES if args.quick else SHAPES)[kind]:
        call = prepare([round(seconds * RATE)] * size)
        for _ in range(2):
            timed(call, args.device)
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - began < args.point_s:
            times.append(timed(call, args.device))
        result["steady"][f"{size}x{seconds:g}s"] = size * seconds / statistics.median(times)
    batches, largest, longest = CHURN[kind]
    generator = torch.Generator().manual_seed(1)
    sequence = []
    for _ in range(batches):
        size = int(torch.randint(1, largest + 1, (1,), generator=generator))
        lengths = (torch.rand(size, generator=generator) * (longest - 1) + 1) * RATE
        sequence.append(prepare([int(n) for n in lengths]))
    passes = [[timed(call, args.device) for call in sequence] for _ in range(2)]
    result["churn_first_s"], result["churn_second_s"] = sum(passes[0]), sum(passes[1])
    result["churn_worst_first_ms"] = 1000 * max(passes[0])
    result["churn_worst_second_ms"] = 1000 * max(passes[1])
    if args.profile and variant == "default" and kind == "cuda":
        result["kernels"] = kernel_table(prepare([4 * RATE] * 32), args.device)
    return result


def kernel_table(call: Callable[[], Any], device: str, top: int = 12) -> list[tuple[str, float, int]]:
    """Device time per kernel name over one batch, largest first: (name, ms, launches)."""
    from torch.profiler import ProfilerActivity, profile

    timed(call, device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timed(call, device)
    rows = []
    for event in prof.key_averages():
        device_us = float(getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0) or 0)
        if device_us > 0:
            rows.append((event.key[:90], device_us / 1000, int(event.count)))
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def run_children(args: argparse.Namespace, model_file: Path) -> list[dict[str, Any]]:
    results = []
    for variant in args.variants:
        command = [sys.executable, __file__, "--child", variant, "--model-file", str(model_file)]
        command += ["--device", args.device, "--dtype", args.dtype, "--random-init", args.random_init]
        command += ["--conv-form", args.conv_form]
        command += ["--point-s", str(args.point_s)] + (["--quick"] if args.quick else [])
        command += ["--profile"] if args.profile else []
        print(f"[{time.strftime('%H:%M:%S')}] {variant}: {VARIANTS[variant]}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout_s)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            print(f"  failed: {reason[:300]}", flush=True)
            results.append({"variant": variant, "error": reason[:300]})
            continue
        result = json.loads(lines[-1])
        print(f"  {json.dumps(result)[:600]}", flush=True)
        results.append(result)
    return results


def markdown(results: Sequence[dict[str, Any]], args: argparse.Namespace, export_s: float) -> str:
    shapes = next((list(r["steady"]) for r in results if "steady" in r), [])
    when = datetime.date.today().isoformat()
    machine = machine_name(args.device)
    machine += "" if torch.__version__ in machine else f", torch {torch.__version__}"
    lines = [
        f"Measured {when} on {machine}, {args.dtype} weights, {args.conv_form} convolutions, "
        f"random-init:{args.random_init}; `python benchmarks/jit_settings.py --device {args.device}"
        f"{' --profile' if args.profile else ''}{' --quick' if args.quick else ''}` (trace: {export_s:.0f} s). "
        "Steady columns: audio-seconds per second at batch x clip length, device-resident input.",
        "",
        "| setting | first call ms | "
        + " | ".join(shapes)
        + " | churn 1st pass s | churn 2nd pass s | worst new-shape call ms |",
        "|---|---:|" + "---:|" * len(shapes) + "---:|---:|---:|",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['variant']} | failed: {result['error'][:80]} |")
            continue
        steady = " | ".join(f"{result['steady'][shape]:,.0f}" for shape in shapes)
        lines.append(
            f"| {result['variant']} | {result['first_call_ms']:,.0f} | {steady} | {result['churn_first_s']:.2f} | "
            f"{result['churn_second_s']:.2f} | {result['churn_worst_first_ms']:,.0f} |"
        )
    kernels = next((r["kernels"] for r in results if r.get("kernels")), None)
    if kernels:
        lines += ["", "Device time per kernel in one batch of 32 x 4 s (default settings):", ""]
        lines += ["| kernel | ms | launches |", "|---|---:|---:|"]
        lines += [f"| `{name}` | {ms:.2f} | {count} |" for name, ms, count in kernels]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--random-init", choices=("tiny", "base"), default="base")
    parser.add_argument(
        "--conv-form", choices=CONV_FORMS, help="convolutions of the traced module (default: the device's target's)"
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--point-s", type=float, default=1.5, help="seconds timed per steady shape")
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    parser.add_argument("--profile", action="store_true", help="kernel table of one batch (cuda)")
    parser.add_argument("--child-timeout-s", type=float, default=240.0)
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--model-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    args.conv_form = args.conv_form or conv_form_for("gpu" if args.device.startswith("cuda") else "cpu")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.model_file, args)), flush=True)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.dtype == "fp16" and not args.device.startswith("cuda"):
        print("error: --dtype fp16 is for --device cuda (on a CPU half precision is slower)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        model_file = Path(scratch) / "model.pt"
        loaded = random_model(args.random_init)
        wanted = {"default": (args.conv_form, loaded)}
        if "native-convs" in args.variants:
            wanted["native-convs"] = ("native", loaded)
        if "sdpa" in args.variants:
            wanted["sdpa"] = (args.conv_form, with_attention(loaded, "sdpa"))
        for variant, (form, model) in wanted.items():
            traced = trace(model, RATE, dtype=args.dtype, device=args.device, conv_form=form)
            traced.save(str(model_file.with_name(TRACED_FILES.get(variant, model_file.name))))
        export_s = time.perf_counter() - began
        results = run_children(args, model_file)
    table = markdown(results, args, export_s)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    key = "jit-gpu" if args.device.startswith("cuda") else "jit"
    write_section(args.output, key, table)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
