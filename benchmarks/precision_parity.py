"""How far a reduced-precision export (`export --dtype int8|bf16|fp16`) moves the answers, on more
speech than the export's own gate runs.

The very gate `export` applies (emotion_build.export.precision.run_gate): the module traced as `export`
traces it for the device's target, against the eager fp32 Hugging Face model, on espeak-ng speech
of 1-10 s in eight voices, each clip alone and in ragged batches of 8; here on 100 clips by
default instead of the export's 40, with the time each pass took. Writes the result between the
`precision` markers of docs/benchmarks.md (`precision-gpu` on CUDA).

    python benchmarks/precision_parity.py                              # int8 on this CPU (make bench-precision)
    python benchmarks/precision_parity.py --dtype bf16
    python benchmarks/precision_parity.py --device cuda --dtype fp16   # where the GPU targets run
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from speed.context import machine_name
from speed.sections import REPO_ROOT, write_section

from emotion_build.export.calibration import calibration_speech
from emotion_build.export.precision import GATE_BATCH_SIZE, Precision, run_gate
from emotion_build.export.speech import speech_for_measurement
from emotion_build.export.tracing import conv_form_for, trace
from emotion_build.model.loading import load_pretrained, random_model
from emotion_build.triton_models.waveform import FloatArray, normalise

RATE = 16000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or directory (default: random-init wav2vec2-base)")
    parser.add_argument("--random-init", choices=("tiny", "base"), default="base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("int8", "bf16", "fp16"), default="int8")
    parser.add_argument("--clips", type=int, default=100, help="speech clips of 1-10 s")
    parser.add_argument("--speech", type=Path, help="a folder of recorded clips instead of espeak-ng (a GPU machine)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    precision: Precision = args.dtype
    cuda = args.device.startswith("cuda")

    loaded = load_pretrained(args.model) if args.model else random_model(args.random_init)
    # Not the export's gate clips (synthesise's default seed) nor its int8 calibration (export.CALIBRATION_SEED).
    raw, source = speech_for_measurement(args.clips, sample_rate=RATE, seed=13, directory=args.speech)
    clips = [normalise(clip, do_normalize=True) for clip in raw]
    conv_form = conv_form_for("gpu" if cuda else "cpu")
    calibration = calibration_speech(RATE, do_normalize=True) if precision == "int8" else []
    module = trace(loaded, RATE, dtype=precision, device=args.device, conv_form=conv_form, calibration=calibration)
    print(
        f"{len(clips)} clips ({source}); {precision} module ({conv_form} convolutions) on {args.device}",
        file=sys.stderr,
    )

    seconds = {"reference": 0.0, "module": 0.0}

    def forward(flat: FloatArray, ends: Sequence[int]) -> torch.Tensor:
        began = time.perf_counter()
        logits: torch.Tensor = module(
            torch.from_numpy(flat).to(args.device), torch.tensor(list(ends), dtype=torch.int32, device=args.device)
        )[0]
        result = logits.float().cpu()
        seconds["module"] += time.perf_counter() - began
        return result

    def reference(clip: FloatArray) -> torch.Tensor:
        began = time.perf_counter()
        logits: torch.Tensor = loaded.model(input_values=torch.from_numpy(clip)[None]).logits
        seconds["reference"] += time.perf_counter() - began
        return logits

    forward(clips[0], [clips[0].size])  # TorchScript's profiling runs are not the module's speed
    forward(clips[0], [clips[0].size])
    seconds["module"] = 0.0
    report = run_gate(forward, reference, clips, precision=precision, sample_rate=RATE, source=source)
    untrained = " (untrained: random weights with a unit-scale classifier)" if loaded.untrained else ""
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine_name(args.device)}; {loaded.source}{untrained}; "
        f"`python benchmarks/precision_parity.py {' '.join(sys.argv[1:] if argv is None else argv)}`. "
        f"The {precision} module as `export` traces it for the {'GPU targets' if cuda else 'cpu target'} "
        f"({conv_form} convolutions) against eager fp32 HF, with the export's gate "
        f"(max |Δprob| ≤ {report.limits.max_abs_prob_diff:g}, top-1 ≥ {report.limits.min_top1_agreement:.0%} of "
        "the clips whose fp32 margin exceeds that limit).",
        "",
        "| | clips | audio s | max abs Δprob | top-1 agreement (decisive clips) | top-1 over all clips |",
        "|---|---:|---:|---:|---:|---:|",
        f"| each clip alone | {report.clips} | {report.audio_s:.0f} | {report.max_abs_prob_diff_alone:.2e} "
        f"| {report.top1_agreement_alone:.1%} of {report.clips - report.ties} | {report.top1_agreement_all:.1%} |",
        f"| ragged batches of {GATE_BATCH_SIZE} | | | {report.max_abs_prob_diff_batched:.2e} "
        f"| {report.top1_agreement_batched:.1%} | |",
        "",
        f"Alone vs batched (the {precision} module's own batch invariance): {report.batch_invariance:.2e}; "
        f"smallest fp32 top-1 margin {report.min_top1_margin:.2e}; max |Δlogit| {report.max_abs_logit_diff:.2e}. "
        f"Time: eager fp32 {seconds['reference']:.1f} s, the {precision} module {seconds['module']:.1f} s "
        f"(alone and batched). Gate: {'**met**' if report.passed else '**not met**'}.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section(args.output, "precision-gpu" if cuda else "precision", body)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
