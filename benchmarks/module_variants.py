"""Which form of the exported module is fastest on this device, and what each form costs in precision.

Every variant is built in one process and the variants are called in turn, shape by shape, so the
drift of a shared machine (a third within minutes on the project's VM) falls on all of them
alike; the table gives each variant's median throughput and its median speed ratio to the
reference variant over the turns. Precision: each variant's largest |Δprobability| against the
eager fp32 model on espeak-ng speech (each clip alone). Variants:

- fp32, bf16, fp16: the module as `export` traces it for this device's target, in that precision;
- -sdpa: the encoder's attention traced as PyTorch's fused scaled-dot-product attention;
- -frozen, -frozen-ofi: `torch.jit.freeze`, then `torch.jit.optimize_for_inference` as well;
- -other-convs: the other form of the two convolutions (matrix products on CPU, native on CUDA);
- -gn-native: the first layer's group norm run in the weights' precision (PyTorch's kernels
  accumulate its statistics in fp32 either way) instead of casting that layer's output to fp32;
- -fp32-front: the first conv layer and its group norm in fp32 (a precision lever: what it costs);
- -aoti (--aoti): a padded-batch form compiled by AOTInductor (`torch.export`, dynamic batch and
  length, group-norm statistics as masked sums): fused elementwise kernels TorchScript lacks;
- -int8 (--int8, CPU): the encoder layers' linear maps as int8 products as `export --dtype int8`
  makes them (emotion_build.model.int8_products: GPTQ-rounded weights, activations per row), everything
  else in the reduced precision;
- hf-fp32, hf-bf16: the Hugging Face model itself on a padded batch (its default attention).

    python benchmarks/module_variants.py --threads 1 --threads 2          # CPU, bf16 variants
    python benchmarks/module_variants.py --device cuda --dtype fp16       # a GPU

The table goes between the `variants` markers of docs/benchmarks.md (`variants-gpu` on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speed.context import machine_name
from speed.sections import REPO_ROOT, write_section
from torch import Tensor, nn

from emotion_build.export.calibration import calibration_speech
from emotion_build.export.precision import TORCH_DTYPES
from emotion_build.export.speech import speech_for_measurement
from emotion_build.export.tracing import conv_form_for
from emotion_build.model import batched_classifier
from emotion_build.model.batched_classifier import RaggedEmotionClassifier
from emotion_build.model.int8_products import calibrate, with_int8_linears
from emotion_build.model.loading import LoadedModel, random_model
from emotion_build.triton_models.heap import keep_freed_memory
from emotion_build.triton_models.ragged import concatenate
from emotion_build.triton_models.waveform import FloatArray, normalise

RATE = 16000
SHAPES = {
    ("cpu", 1): [(1, 1.0), (4, 1.0), (1, 4.0), (1, 10.0)],
    ("cpu", 2): [(1, 1.0), (8, 1.0), (4, 4.0), (2, 10.0)],
    ("cuda", 0): [(32, 1.0), (32, 4.0), (16, 10.0)],
}
FORMS = ("", "-sdpa", "-frozen", "-frozen-ofi", "-other-convs", "-gn-native", "-fp32-front")
Call = Callable[[FloatArray, Sequence[int]], Tensor]
"""A flat batch and its clip ends -> probabilities [clips, classes]."""


class FrontEndChoices(RaggedEmotionClassifier):
    """The exported module with the first conv layer's precision changed, for the -gn-native and
    -fp32-front variants only (the export keeps the statistics in fp32 on a cast copy)."""

    def __init__(self, model: Any, conv_form: batched_classifier.ConvForm, front: str) -> None:
        super().__init__(model, conv_form)
        self.front = front
        if front == "fp32":
            self.front_layer = copy.deepcopy(self.conv_layers[0]).float()

    def _conv_features(self, padded: Tensor, lengths: Tensor) -> Tensor:
        kernel, stride = self.conv_geometry[0]
        valid_frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        first: Any = self.front_layer if self.front == "fp32" else self.conv_layers[0]
        hidden = first.conv((padded if self.front == "fp32" else padded.to(self.weight_dtype)).unsqueeze(1))
        norm = first.layer_norm
        weight, bias = norm.weight.to(hidden.dtype), norm.bias.to(hidden.dtype)
        normed = native_group_norm(hidden, valid_frames, weight, bias, float(norm.eps))
        hidden = first.activation(normed).to(self.weight_dtype)
        for conv_layer in list(self.conv_layers)[1:]:
            hidden = conv_layer(hidden)
        features: Tensor = hidden.transpose(1, 2)
        return features


@torch.jit.script
def native_group_norm(hidden: Tensor, valid_frames: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """clip_group_norm without the cast to fp32: per clip, in the input's own precision."""
    channels = hidden.shape[1]
    if bool((valid_frames == hidden.shape[-1]).all()):
        return torch.group_norm(hidden, channels, weight, bias, eps)
    normed = torch.empty_like(hidden)
    counts: list[int] = valid_frames.tolist()
    for row, count in enumerate(counts):
        normed[row, :, :count] = torch.group_norm(hidden[row : row + 1, :, :count], channels, weight, bias, eps)[0]
        normed[row, :, count:] = 0.0
    return normed


class PaddedForExport(RaggedEmotionClassifier):
    """The module on a zero-padded batch with every mask made of tensor operations (group-norm
    statistics as masked sums, one matrix product for the positional conv): no per-clip loop and no
    host read, so `torch.export` traces it with a dynamic batch and length for AOTInductor."""

    def forward(self, padded: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        first: Any = self.conv_layers[0]
        kernel, stride = self.conv_geometry[0]
        hidden = first.conv(padded.to(self.weight_dtype).unsqueeze(1)).float()
        valid_frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        steps = torch.arange(hidden.shape[-1], device=hidden.device)
        mask = (steps.unsqueeze(0) < valid_frames.unsqueeze(1)).unsqueeze(1).to(hidden.dtype)
        count = valid_frames.to(hidden.dtype).view(-1, 1, 1)
        mean = (hidden * mask).sum(-1, keepdim=True) / count
        centred = (hidden - mean) * mask
        variance = (centred * centred).sum(-1, keepdim=True) / count
        norm = first.layer_norm
        normed = centred * torch.rsqrt(variance + norm.eps) * norm.weight.float().view(1, -1, 1)
        normed = (normed + norm.bias.float().view(1, -1, 1)) * mask
        hidden = first.activation(normed.to(self.weight_dtype))
        for conv_layer in list(self.conv_layers)[1:]:
            hidden = conv_layer(hidden)
        frames = self.frame_lengths(lengths)
        positions = torch.arange(hidden.shape[-1], device=hidden.device)
        return self.classify(hidden.transpose(1, 2), positions.unsqueeze(0) < frames.unsqueeze(1))

    def _positional(self, hidden: Tensor, keep: Tensor) -> Tensor:
        if not self.matmul_convs:
            return super()._positional(hidden, keep)
        weight: Any = self.positional_weight
        groups, span, _ = weight.shape
        kernel = span // (hidden.shape[2] // groups)
        steps = hidden.shape[1]
        padded = nn.functional.pad(hidden, [0, 0, self.positional_padding, self.positional_padding])
        windows = padded.unfold(1, kernel, 1)[:, :steps].reshape(-1, groups, span).transpose(0, 1)
        bias: Any = self.positional_bias
        products = torch.baddbmm(bias.view(groups, 1, -1), windows, weight)
        activated: Tensor = self.encoder.pos_conv_embed.activation(products.transpose(0, 1).reshape(hidden.shape))
        return activated


def int8_linears(model: Any, loaded: LoadedModel) -> None:
    """The export's int8 products: GPTQ-rounded on its own calibration speech (not the Δprob clips)."""
    calibration = calibration_speech(RATE, do_normalize=True)
    with_int8_linears(model, loaded.model, calibrate(loaded.model, calibration))


def aoti(model: Any, conv_form: batched_classifier.ConvForm, device: str, package: Path) -> Call:
    """PaddedForExport compiled ahead of time by AOTInductor (minutes), then called like the others."""
    module = PaddedForExport(model, conv_form).eval().to(device)
    batch, samples = torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC  # export derives the bounds
    example = (torch.randn(2, 2 * RATE, device=device), torch.tensor([2 * RATE, RATE], device=device))
    with torch.no_grad():
        program = torch.export.export(
            module, example, dynamic_shapes={"padded": {0: batch, 1: samples}, "lengths": {0: batch}}
        )
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(package))
    runner = torch._inductor.aoti_load_package(path)

    def call(flat: FloatArray, ends: Sequence[int]) -> Tensor:
        starts = [0, *ends[:-1]]
        lengths = [end - start for start, end in zip(starts, ends, strict=True)]
        batch_tensor = torch.zeros(len(ends), max(lengths))
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            batch_tensor[row, : end - start] = torch.from_numpy(flat[start:end])
        outputs = runner(batch_tensor.to(device), torch.tensor(lengths, device=device))
        probabilities: Tensor = outputs[1]
        return probabilities

    return call


def traced(module: nn.Module, device: str, *, freeze: bool = False, ofi: bool = False) -> Call:
    module = module.eval().to(device)
    example = (torch.randn(RATE + 9600, device=device), torch.tensor([RATE, RATE + 9600], device=device).int())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        script: Any = torch.jit.trace(module, example, check_trace=False)  # type: ignore[no-untyped-call]
    if freeze:
        script = torch.jit.freeze(script.eval())
    if ofi:
        script = torch.jit.optimize_for_inference(script)

    def call(flat: FloatArray, ends: Sequence[int]) -> Tensor:
        ends_tensor = torch.tensor(list(ends), dtype=torch.int32, device=device)
        probabilities: Tensor = script(torch.from_numpy(flat).to(device), ends_tensor)[1]
        return probabilities

    return call


def hf_padded(loaded: LoadedModel, dtype: torch.dtype, device: str) -> Call:
    """The plain Hugging Face model on a zero-padded batch, as a user batching it themselves would run it."""
    model = copy.deepcopy(loaded.model)
    model.config._attn_implementation = "sdpa"
    nn.Module.to(model, device=device, dtype=dtype)

    def call(flat: FloatArray, ends: Sequence[int]) -> Tensor:
        starts = [0, *ends[:-1]]
        batch = torch.zeros(len(ends), max(e - s for s, e in zip(starts, ends, strict=True)), dtype=dtype)
        for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
            batch[row, : end - start] = torch.from_numpy(flat[start:end])
        logits: Tensor = model(batch.to(device)).logits
        return torch.softmax(logits.float(), dim=-1)

    return call


def build(name: str, loaded: LoadedModel, device: str) -> Call:
    if name.startswith("hf-"):
        return hf_padded(loaded, TORCH_DTYPES[name.removeprefix("hf-")], device)  # type: ignore[index]
    precision, _, form = name.partition("-")
    target_form = conv_form_for("gpu" if device.startswith("cuda") else "cpu")
    conv_form: batched_classifier.ConvForm = target_form
    if form == "other-convs":
        conv_form = "native" if target_form == "matmul" else "matmul"
    model = copy.deepcopy(loaded.model)
    if form == "sdpa":
        model.config._attn_implementation = "sdpa"
    nn.Module.to(model, TORCH_DTYPES[precision])  # type: ignore[index]
    if form == "int8":
        int8_linears(model, loaded)
    if form == "aoti":
        return aoti(model, conv_form, device, Path(tempfile.mkdtemp(prefix="aoti-")) / "module.pt2")
    if form in ("gn-native", "fp32-front"):
        front = "fp32" if form == "fp32-front" else "native"
        return traced(FrontEndChoices(model, conv_form, front), device)
    module = RaggedEmotionClassifier(model, conv_form)
    return traced(module, device, freeze=form.startswith("frozen"), ofi=form == "frozen-ofi")


@dataclasses.dataclass(frozen=True, slots=True)
class Measured:
    variant: str
    shape: str
    audio_s_per_s: float
    ratio: float
    """Median over the turns of the reference's time over this variant's: above 1 is faster."""


def measure(calls: dict[str, Call], reference: str, shape: tuple[int, float], point_s: float) -> list[Measured]:
    size, seconds = shape
    rng = np.random.default_rng(0)
    clips = [normalise((0.1 * rng.standard_normal(round(seconds * RATE))).astype(np.float32), do_normalize=True)]
    flat, ends_array = concatenate(clips * size)
    ends = ends_array.tolist()
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():  # TorchScript's profiling runs, and the allocator's first batch
            call(flat, ends)
            call(flat, ends)
        began = time.perf_counter()
        while time.perf_counter() - began < point_s * len(calls) or len(times[reference]) < 3:
            for name, call in calls.items():
                start = time.perf_counter()
                call(flat, ends)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    return [
        Measured(
            name,
            f"{size}x{seconds:g}s",
            size * seconds / statistics.median(times[name]),
            statistics.median(r / t for r, t in zip(times[reference], times[name], strict=True)),
        )
        for name in calls
    ]


def drift(calls: dict[str, Call], loaded: LoadedModel, clips: Sequence[FloatArray]) -> dict[str, float]:
    """Each variant's largest |Δprobability| against the eager fp32 model, each clip alone."""
    with torch.inference_mode():
        eager = [torch.softmax(loaded.model(input_values=torch.from_numpy(c)[None]).logits, -1) for c in clips]
        return {
            name: max(
                float((call(c, [c.size]).float().cpu() - e).abs().max()) for c, e in zip(clips, eager, strict=True)
            )
            for name, call in calls.items()
        }


def markdown(results: dict[int, list[Measured]], drifts: dict[str, float], args: argparse.Namespace, clips: int) -> str:
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine_name(args.device)}, random-init:{args.random_init}; "
        f"`python benchmarks/module_variants.py {' '.join(sys.argv[1:])}`. Audio-seconds per second at "
        f"batch x clip length, and in brackets the median speed ratio to `{args.reference}` over turns that call "
        f"every variant in turn; Δprob: largest |Δprobability| against eager fp32 HF on {clips} clips of "
        f"1-10 s ({args.speech_source}), each alone.",
    ]
    for threads, measured in results.items():
        shapes = list(dict.fromkeys(m.shape for m in measured))
        label = f"{threads} thread{'s' if threads > 1 else ''}" if threads else "device"
        lines += [
            "",
            f"| variant ({label}) | " + " | ".join(shapes) + " | Δprob |",
            "|---|" + "---:|" * (len(shapes) + 1),
        ]
        for variant in dict.fromkeys(m.variant for m in measured):
            cells = [next(m for m in measured if m.variant == variant and m.shape == s) for s in shapes]
            row = " | ".join(f"{m.audio_s_per_s:,.1f} ({m.ratio:.2f}x)" for m in cells)
            lines.append(f"| {variant} | {row} | {drifts.get(variant, float('nan')):.1e} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16", help="the reduced precision measured")
    parser.add_argument("--random-init", choices=("tiny", "base"), default="base")
    parser.add_argument("--variants", nargs="+", help="default: fp32, the dtype in every form, hf-fp32, hf-<dtype>")
    parser.add_argument("--threads", type=int, action="append", help="torch intra-op threads (CPU; repeatable)")
    parser.add_argument("--point-s", type=float, default=4.0, help="seconds per variant per shape")
    parser.add_argument("--clips", type=int, default=16, help="speech clips for the Δprob column")
    parser.add_argument("--speech", type=Path, help="a folder of recorded clips instead of espeak-ng (a GPU machine)")
    parser.add_argument("--aoti", action="store_true", help="add <dtype>-aoti: AOTInductor (minutes to compile)")
    parser.add_argument("--int8", action="store_true", help="add <dtype>-int8: int8 encoder linears (CPU)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    forms = FORMS + (("-aoti",) if args.aoti else ()) + (("-int8",) if args.int8 else ())
    args.variants = args.variants or ["fp32", *(args.dtype + form for form in forms), "hf-fp32", f"hf-{args.dtype}"]
    args.reference = args.dtype
    args.threads = [0] if args.device.startswith("cuda") else (args.threads or [1, 2])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory(1024 * 2**20)  # as the cpu runner: no page faults per batch
    loaded = random_model(args.random_init)
    calls = {name: build(name, loaded, args.device) for name in args.variants}
    if args.reference not in calls:
        calls = {args.reference: build(args.reference, loaded, args.device), **calls}
    raw, args.speech_source = speech_for_measurement(args.clips, sample_rate=RATE, seed=3, directory=args.speech)
    speech = [normalise(c, do_normalize=True) for c in raw]
    torch.set_num_threads(max(args.threads))
    drifts = drift(calls, loaded, speech)
    results: dict[int, list[Measured]] = {}
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        results[threads] = []
        shapes = SHAPES[("cuda", 0)] if kind == "cuda" else SHAPES.get((kind, threads), SHAPES[("cpu", 2)])
        for shape in shapes:
            measured = measure(calls, args.reference, shape, args.point_s)
            print(" | ".join(f"{m.variant} {m.audio_s_per_s:.1f} ({m.ratio:.2f}x)" for m in measured), flush=True)
            results[threads] += measured
    table = markdown(results, drifts, args, len(speech))
    print(table)
    if not args.no_write:
        write_section(args.output, "variants-gpu" if kind == "cuda" else "variants", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
