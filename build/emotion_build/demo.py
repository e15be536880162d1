"""`python -m emotion_build demo`: the whole path on this machine, from weights to printed answers.

Exports a CPU repository when there is none (the real model when reachable, otherwise an
UNTRAINED stand-in, said loudly), starts the pip tritonserver on free ports, classifies each
sample through the SDK, and stops the server whatever happens.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .export.pipeline import describe, export
from .model.loading import DEFAULT_MODEL, LoadedModel, ModelUnavailableError, load_pretrained, random_model
from .model.names import UNTRAINED_BANNER
from .repository.description import CLASSIFIER_MODEL, PROVENANCE_FILE, BatchingSettings, Provenance
from .server.errors import ServerError
from .server.launcher import TritonServer

__all__ = ["run_demo"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_for_demo(model: str) -> LoadedModel:
    try:
        return load_pretrained(model)
    except ModelUnavailableError as error:
        _say(f"warning: {error}")
        _say("falling back to --random-init base: the answers below are NOT emotions")
        return random_model("base")


def _existing(repository: Path) -> Provenance | None:
    record = repository / CLASSIFIER_MODEL / "1" / PROVENANCE_FILE
    if not record.is_file():
        return None
    provenance = Provenance.from_json(record.read_text())
    return provenance if provenance.target == "cpu" else None


def run_demo(repository: Path, samples: Path, *, model: str = DEFAULT_MODEL, rebuild: bool = False) -> int:
    from emotion_client import EmotionClient, EmotionClientError  # the [demo] extra: the build needs no client

    files = sorted(p for p in samples.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES) if samples.is_dir() else []
    if not files:
        _say(f"error: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {samples}")
        return 2

    provenance = None if rebuild else _existing(repository)
    if provenance is None:
        loaded = _load_for_demo(model)
        if loaded.untrained:
            _say(UNTRAINED_BANNER.format(source=loaded.source))
        description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
        provenance = export(loaded, repository, "cpu", description).provenance
    else:
        _say(f"reusing {repository} (exported from {provenance.source_model}; --rebuild to export again)")

    _say("starting tritonserver (CPU) ...")
    failures = 0
    try:
        with TritonServer(repository) as server, EmotionClient(server.endpoints.grpc_url) as client:
            _say(f"serving on gRPC {server.endpoints.grpc_url}, HTTP {server.endpoints.http_url}")
            info = client.model_info()
            print(f"\n{'file':<30} {'label':>6} {'score':>6}   all scores")
            for path in files:
                try:
                    result = client.classify(path)
                except EmotionClientError as error:
                    failures += 1
                    print(f"{path.name:<30} error: {error}")
                    continue
                scores = "  ".join(f"{entry.label} {entry.score:.3f}" for entry in result.scores)
                print(f"{path.name:<30} {result.label:>6} {result.score:>6.3f}   {scores}")
            print(f"\nlabels from the server: {', '.join(info.labels)}")
            if info.untrained:
                print(UNTRAINED_BANNER.format(source=provenance.source_model))
    except ServerError as error:  # the server is not installed, or cannot run here
        _say(f"error: {error}")
        return 2
    return 1 if failures else 0
