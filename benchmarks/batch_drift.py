"""How far does batching move a clip's answer? HF's padded batch vs this project's ragged batch.

For the same mixed-length clips, each clip alone through the eager HF model is the reference.
Hugging Face batches by zero-padding to the longest clip; wav2vec2-base's feature extractor does
not return an attention mask (its group-norm conv would see the padding anyway), so the padded
answers drift. The exported TorchScript module masks every time-mixing step instead.

    python benchmarks/batch_drift.py                      # full-size wav2vec2-base, random weights
    python benchmarks/batch_drift.py --model DIR          # real weights
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from emotion_build.export.tracing import trace
from emotion_build.model.loading import load_pretrained, random_model
from emotion_build.triton_models.waveform import FloatArray, normalise

SENTENCES = (
    "Please hold while I transfer your call.",
    "That is the best news I have heard all year!",
    "Why does this keep happening to me?",
    "I suppose we could try again tomorrow.",
)


def speech_clips(lengths_s: list[float], sample_rate: int) -> tuple[list[FloatArray], str]:
    """espeak-ng sentences cut to each length, or seeded noise where espeak-ng is not installed."""
    rng = np.random.default_rng(0)
    if shutil.which("espeak-ng") is None:
        return [(0.1 * rng.standard_normal(round(s * sample_rate))).astype(np.float32) for s in lengths_s], "noise"
    clips = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, seconds in enumerate(lengths_s):
            path = Path(scratch) / f"{i}.wav"
            text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(2 + int(seconds)))
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            audio, rate = soundfile.read(path, dtype="float32")
            audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
            while audio.size < seconds * sample_rate:
                audio = np.concatenate([audio, audio])
            clips.append(audio[: round(seconds * sample_rate)])
    return clips, "espeak-ng speech"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or directory (default: random-init wav2vec2-base)")
    parser.add_argument("--random-init", choices=("tiny", "base"), default="base")
    parser.add_argument("--lengths-s", type=float, nargs="+", default=[0.3, 0.8, 1.7, 2.9, 4.4, 6.5, 10.2, 15.0])
    args = parser.parse_args()

    loaded = load_pretrained(args.model) if args.model else random_model(args.random_init)
    extractor = loaded.feature_extractor
    rate = int(extractor.sampling_rate)
    clips, kind = speech_clips(args.lengths_s, rate)
    print(f"model: {loaded.source}{' (UNTRAINED)' if loaded.untrained else ''}; clips: {kind}")

    model = loaded.model
    scripted = trace(loaded, rate)
    with torch.no_grad():
        alone = [
            torch.softmax(model(torch.from_numpy(extractor(c, sampling_rate=rate).input_values[0])[None]).logits, -1)[0]
            for c in clips
        ]
        padded = extractor(clips, sampling_rate=rate, padding=True, return_tensors="pt")
        hf_batch = torch.softmax(model(padded.input_values).logits, -1)
        masked = extractor(clips, sampling_rate=rate, padding=True, return_attention_mask=True, return_tensors="pt")
        hf_masked = torch.softmax(model(masked.input_values, attention_mask=masked.attention_mask).logits, -1)
        normalised = [normalise(c, do_normalize=bool(extractor.do_normalize)) for c in clips]
        ends = torch.tensor(np.cumsum([c.size for c in normalised]), dtype=torch.int32)
        ours = scripted(torch.from_numpy(np.concatenate(normalised)), ends)[1]

    rows = []
    for i, seconds in enumerate(args.lengths_s):
        rows.append(
            (
                seconds,
                float((hf_batch[i] - alone[i]).abs().max()),
                float((hf_masked[i] - alone[i]).abs().max()),
                float((ours[i] - alone[i]).abs().max()),
            )
        )
    print(f"\nmax |Δprob| against the same clip alone (eager HF), one batch of {len(clips)} clips\n")
    print("| clip (s) | HF padded batch | HF padded + attention_mask | ragged TorchScript (ours) |")
    print("|---:|---:|---:|---:|")
    for seconds, hf, hf_mask, our in rows:
        print(f"| {seconds:.1f} | {hf:.2e} | {hf_mask:.2e} | {our:.2e} |")
    worst = [max(r[k] for r in rows) for k in (1, 2, 3)]
    print(f"| **max** | **{worst[0]:.2e}** | **{worst[1]:.2e}** | **{worst[2]:.2e}** |")
    flips = [int(torch.argmax(hf_batch[i]) != torch.argmax(alone[i])) for i in range(len(clips))]
    print(f"\ntop-1 label changed by HF's padded batch: {sum(flips)} of {len(clips)} clips")


if __name__ == "__main__":
    main()
