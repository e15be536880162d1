"""How far a half-precision export (`export --dtype fp16`) moves the answers, on speech.

Traces the same model twice, fp32 and fp16, exactly as `export` does, and runs espeak-ng speech of
1-10 s in several voices through both (each clip alone, then the fp16 module on ragged batches of
8). The reference is the fp32 TorchScript module, which the export itself checks against eager HF
to 1e-4 in logits. Writes the result between the `fp16` markers of docs/benchmarks.md.

    python benchmarks/fp16_parity.py                     # CPU (torch has half-precision CPU kernels)
    python benchmarks/fp16_parity.py --device cuda       # where the GPU targets run (`fp16-gpu` markers)
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from speed.context import machine_name
from speed.sections import REPO_ROOT, write_section

from emotion_build.export import FP16_PROBABILITY_TOLERANCE, conv_form_for, trace
from emotion_build.loading import load_pretrained, random_model
from emotion_build.triton_models.ragged import concatenate
from emotion_build.triton_models.waveform import FloatArray, normalise

RATE = 16000
VOICES = ("en", "en+f3", "en+m3", "en-us", "en+f2", "en+m1", "en-gb", "en+f4")
SENTENCES = (
    "The meeting has been moved to Thursday afternoon.",
    "I can't believe you did that again!",
    "Thank you so much, this is wonderful news.",
    "I'm sorry, I don't think I can make it.",
    "Why does this keep happening to me?",
    "Please hold while I transfer your call.",
    "That is the best news I have heard all year!",
    "I suppose we could try again tomorrow.",
)
TOP1_TARGET = 0.99


def speech(count: int, seed: int) -> list[FloatArray]:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is needed for speech clips: apt-get install espeak-ng (or `make setup`)")
    rng = np.random.default_rng(seed)
    clips = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(count):
            seconds = float(rng.uniform(1.0, 10.0))
            text = " ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(2 + int(seconds)))
            path = Path(scratch) / f"{index}.wav"
            voice = VOICES[index % len(VOICES)]
            speed = str(int(rng.integers(130, 200)))
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", speed, "-w", str(path), text], check=True, capture_output=True
            )
            audio, rate = soundfile.read(path, dtype="float32")
            audio = soxr.resample(audio, rate, RATE).astype(np.float32)
            while audio.size < seconds * RATE:
                audio = np.concatenate([audio, np.zeros(RATE // 4, np.float32), audio])
            clips.append(normalise(audio[: round(seconds * RATE)], do_normalize=True))
    return clips


def run_alone(module: torch.jit.ScriptModule, clips: Sequence[FloatArray], device: str) -> tuple[torch.Tensor, float]:
    outputs = []
    start = time.perf_counter()
    with torch.inference_mode():
        for clip in clips:
            ends = torch.tensor([clip.size], dtype=torch.int32, device=device)
            outputs.append(module(torch.from_numpy(clip).to(device), ends)[1].float().cpu())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return torch.cat(outputs), time.perf_counter() - start


def run_batched(module: torch.jit.ScriptModule, clips: Sequence[FloatArray], device: str, size: int) -> torch.Tensor:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(clips), size):
            flat, ends = concatenate(clips[start : start + size])
            result = module(torch.from_numpy(flat).to(device), torch.from_numpy(ends).to(device))
            outputs.append(result[1].float().cpu())
    return torch.cat(outputs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or directory (default: random-init wav2vec2-base)")
    parser.add_argument("--random-init", choices=("tiny", "base"), default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clips", type=int, default=100, help="speech clips of 1-10 s")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    loaded = load_pretrained(args.model) if args.model else random_model(args.random_init)
    clips = speech(args.clips, seed=7)
    audio_s = sum(clip.size for clip in clips) / RATE
    print(f"{len(clips)} espeak-ng clips, {audio_s:.0f} s of speech; model {loaded.source}", file=sys.stderr)
    # The fp16 module exactly as the GPU targets export it (matmul convolutions) against the fp32
    # module as the cpu target does: the gate covers the whole GPU artifact, not only its precision.
    fp32 = trace(loaded, RATE, dtype="fp32", device=args.device)
    fp16 = trace(loaded, RATE, dtype="fp16", device=args.device, conv_form=conv_form_for("gpu"))
    for module in (fp32, fp16):  # the profiling executor's first runs
        run_alone(module, clips[:2], args.device)
    reference, fp32_s = run_alone(fp32, clips, args.device)
    half, fp16_s = run_alone(fp16, clips, args.device)
    half_batched = run_batched(fp16, clips, args.device, 8)

    drift = (half - reference).abs().max(dim=-1).values
    batched_drift = (half_batched - reference).abs().max(dim=-1).values
    agree = (half.argmax(-1) == reference.argmax(-1)).float().mean().item()
    agree_batched = (half_batched.argmax(-1) == reference.argmax(-1)).float().mean().item()
    worst = max(drift.max().item(), batched_drift.max().item())
    ok = worst <= FP16_PROBABILITY_TOLERANCE and min(agree, agree_batched) >= TOP1_TARGET
    untrained = " (untrained: random weights with a unit-scale classifier)" if loaded.untrained else ""
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine_name(args.device)}; {loaded.source}{untrained}; "
        f"{len(clips)} espeak-ng clips of 1-10 s ({audio_s:.0f} s), {len(VOICES)} voices. fp16: the module as "
        f"the GPU targets export it ({conv_form_for('gpu')} convolutions); reference: the fp32 module as the cpu "
        "target exports it (itself within 1e-4 of eager HF in logits).",
        "",
        "| fp16 module | max abs Δprob | mean of per-clip max abs Δprob | top-1 agreement | time for all clips |",
        "|---|---:|---:|---:|---:|",
        f"| each clip alone | {drift.max().item():.2e} | {drift.mean().item():.2e} | {agree:.1%} | {fp16_s:.1f} s "
        f"(fp32: {fp32_s:.1f} s) |",
        f"| ragged batches of 8 | {batched_drift.max().item():.2e} | {batched_drift.mean().item():.2e} "
        f"| {agree_batched:.1%} | |",
        "",
        f"Gate: max |Δprob| ≤ {FP16_PROBABILITY_TOLERANCE:g} and top-1 agreement ≥ {TOP1_TARGET:.0%}: "
        + ("**met**." if ok else "**not met**."),
    ]
    body = "\n".join(lines)
    write_section(args.output, "fp16-gpu" if args.device.startswith("cuda") else "fp16", body)
    print(body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
