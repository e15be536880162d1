"""The production classifier, served: Triton's libtorch backend against eager Hugging Face and the Python runner.

Exports one model for the cpu target and for the gpu target with `--classifier-on-cpu`, serves each
(the gpu one in the libtorch backend `make libtorch-backend` builds) with its target's batching and
no queue timeout, and sends espeak-ng speech of 0.3-10 s through the ensemble: every clip alone,
against eager Hugging Face on the same audio, then all of them from many threads at once, against
the alone answers, with the classifier's batch sizes from Triton's statistics. Prints a table;
changes no file.

    python benchmarks/served_parity.py                      # random-init wav2vec2-base, 32 clips, about 8 min
    python benchmarks/served_parity.py --model DIR          # real weights
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as grpcclient
from batch_drift import speech_clips
from speed.progress import log
from speed.workloads import RATE

from emotion_build.export.pipeline import describe, export
from emotion_build.model.loading import LoadedModel, load_pretrained, random_model
from emotion_build.repository.description import (
    AUDIO_INPUT,
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    PROBABILITIES_OUTPUT,
    BatchingSettings,
    Target,
)
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer
from emotion_build.server.libtorch_backend import check_backend, default_backends_dir
from emotion_build.triton_models.waveform import FloatArray

RUNTIMES: dict[str, Target] = {"python": "cpu", "libtorch": "gpu"}
_LOCAL = threading.local()


@dataclasses.dataclass(frozen=True, slots=True)
class Served:
    runtime: str
    alone: np.ndarray[Any, np.dtype[np.float32]]
    together: np.ndarray[Any, np.dtype[np.float32]]
    batch_sizes: dict[int, int]
    """Classifier executions of the concurrent phase by batch size."""


def probabilities(url: str, clip: FloatArray) -> np.ndarray[Any, np.dtype[np.float32]]:
    clients: dict[str, Any] = _LOCAL.__dict__.setdefault("clients", {})
    client = clients.setdefault(url, grpcclient.InferenceServerClient(url))
    request = grpcclient.InferInput(AUDIO_INPUT, [1, clip.size], "FP32")
    request.set_data_from_numpy(clip[None, :])
    response = client.infer(ENSEMBLE_MODEL, [request], client_timeout=600)
    return np.asarray(response.as_numpy(PROBABILITIES_OUTPUT)[0], dtype=np.float32)


def batch_sizes(url: str) -> dict[int, int]:
    client = grpcclient.InferenceServerClient(url)
    (stats,) = client.get_inference_statistics(CLASSIFIER_MODEL, as_json=True)["model_stats"]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def eager(loaded: LoadedModel, clips: Sequence[FloatArray]) -> np.ndarray[Any, np.dtype[np.float32]]:
    rows = []
    with torch.no_grad():
        for clip in clips:
            inputs = loaded.feature_extractor(clip, sampling_rate=RATE, return_tensors="pt")
            rows.append(torch.softmax(loaded.model(inputs.input_values).logits, dim=-1)[0].numpy())
    return np.stack(rows)


def serve_and_measure(
    loaded: LoadedModel, runtime: str, clips: Sequence[FloatArray], scratch: Path, threads: int
) -> Served:
    target = RUNTIMES[runtime]
    # No queue timeout: on a CPU, the full-size model keeps requests from many threads queued for seconds.
    batching = dataclasses.replace(
        BatchingSettings.for_target(target), classifier_on_cpu=target != "cpu", queue_timeout_ms=0
    )
    description = describe(loaded, batching=batching, min_duration_s=0.1, max_duration_s=30.0)
    repository = export(loaded, scratch / runtime, target, description, progress=log, dtype="fp32").repository
    install = None
    if runtime == "libtorch":
        check_backend(default_backends_dir())
        install = find_tritonserver(extra_backends=default_backends_dir())
    with TritonServer(repository, install=install) as server:
        url = server.endpoints.grpc_url
        log(f"{runtime}: {len(clips)} clips alone")
        alone = np.stack([probabilities(url, clip) for clip in clips])
        before = batch_sizes(url)
        log(f"{runtime}: {len(clips)} clips from {threads} threads")
        with ThreadPoolExecutor(threads) as pool:
            together = np.stack(list(pool.map(lambda clip: probabilities(url, clip), clips)))
        after = batch_sizes(url)
    changed = {size: after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    return Served(runtime, alone, together, changed)


def table(served: Sequence[Served], reference: np.ndarray[Any, np.dtype[np.float32]]) -> str:
    lines = [
        "| classifier | max \\|Δprob\\| alone vs eager HF | top-1 as eager | max \\|Δprob\\| concurrent vs alone "
        "| executions | average batch | largest batch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for item in served:
        executions = sum(item.batch_sizes.values())
        average = sum(size * count for size, count in item.batch_sizes.items()) / max(executions, 1)
        top1 = float((item.alone.argmax(1) == reference.argmax(1)).mean())
        lines.append(
            f"| {item.runtime} | {np.abs(item.alone - reference).max():.1e} | {top1:.0%} "
            f"| {np.abs(item.together - item.alone).max():.1e} | {executions} | {average:.1f} "
            f"| {max(item.batch_sizes, default=0)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF id or directory (default: random-init wav2vec2-base)")
    parser.add_argument("--clips", type=int, default=32, help="espeak-ng clips of 0.3-10 s (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=16, help="concurrent clients (default: %(default)s)")
    args = parser.parse_args(argv)
    loaded = load_pretrained(args.model) if args.model else random_model("base", seed=0)
    lengths = np.round(np.random.default_rng(21).uniform(0.3, 10.0, args.clips), 2).tolist()
    clips, kind = speech_clips(lengths, RATE)
    log(f"eager Hugging Face on {len(clips)} clips of {kind}")
    reference = eager(loaded, clips)
    with tempfile.TemporaryDirectory() as scratch:
        served = [serve_and_measure(loaded, runtime, clips, Path(scratch), args.threads) for runtime in RUNTIMES]
    between = float(np.abs(served[0].alone - served[1].alone).max())
    print(
        f"{loaded.source}{' (untrained)' if loaded.untrained else ''}, {len(clips)} clips of {kind}, "
        f"{min(lengths):.1f}-{max(lengths):.1f} s, each target's batching, {args.threads} threads; "
        f"`{' '.join(['python benchmarks/served_parity.py', *(sys.argv[1:] if argv is None else argv)])}`\n"
    )
    print(table(served, reference))
    print(f"\nlibtorch backend vs Python runner, each clip alone: max |Δprob| {between:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
