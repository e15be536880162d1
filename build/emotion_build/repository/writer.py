"""Write a Triton model repository: configs, labels, the Python models, the artifact's provenance."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from .configs import all_configs, render
from .description import (
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    LABELS_FILE,
    PREPROCESS_MODEL,
    PROVENANCE_FILE,
    STREAM_MODEL,
    ModelDescription,
    Provenance,
    Target,
)

__all__ = ["MODEL_SOURCES", "write_repository"]

_PREPROCESS_SOURCES = (
    ("preprocess_model.py", "model.py"),
    ("heap.py", "heap.py"),
    ("shm_pages.py", "shm_pages.py"),
    ("waveform.py", "waveform.py"),
)
_RUNNER_SOURCES = (
    ("classifier_model.py", "model.py"),
    ("cpu_features.py", "cpu_features.py"),
    ("heap.py", "heap.py"),
    ("openvino_engine.py", "openvino_engine.py"),
    ("ragged.py", "ragged.py"),
    ("shm_pages.py", "shm_pages.py"),
    ("waveform.py", "waveform.py"),
)

_STREAM_SOURCES = (
    ("stream_model.py", "model.py"),
    ("stream_windows.py", "stream_windows.py"),
    ("waveform.py", "waveform.py"),
)

MODEL_SOURCES: dict[str, dict[Target, tuple[tuple[str, str], ...]]] = {
    PREPROCESS_MODEL: {"gpu": _PREPROCESS_SOURCES, "cpu": _PREPROCESS_SOURCES, "gpu-python": _PREPROCESS_SOURCES},
    CLASSIFIER_MODEL: {"gpu": (), "cpu": _RUNNER_SOURCES, "gpu-python": _RUNNER_SOURCES},
    ENSEMBLE_MODEL: {"gpu": (), "cpu": (), "gpu-python": ()},
    STREAM_MODEL: {"gpu": _STREAM_SOURCES, "cpu": _STREAM_SOURCES, "gpu-python": _STREAM_SOURCES},
}
"""Which source files of `triton_models` each served model needs, and the name each takes there."""


def write_repository(
    output: Path,
    description: ModelDescription,
    target: Target,
    *,
    artifacts: Mapping[str, Path],
    provenance: Provenance,
) -> None:
    """Lay the repository out beside `output` and swap it in, so a failed build never leaves half a repo.

    `artifacts` are the classifier's files by their name in its version directory (model.pt, or the
    OpenVINO IR's model.xml and model.bin)."""
    output = output.resolve()
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    sources = resources.files("emotion_build.triton_models")
    for name, config in all_configs(description, target).items():
        version = staging / name / "1"
        version.mkdir(parents=True)
        (staging / name / "config.pbtxt").write_text(render(config))
        for source, destination in MODEL_SOURCES[name][target]:
            (version / destination).write_text(sources.joinpath(source).read_text())
    (staging / ENSEMBLE_MODEL / LABELS_FILE).write_text("".join(f"{label}\n" for label in description.labels))
    for name, artifact in artifacts.items():
        shutil.copyfile(artifact, staging / CLASSIFIER_MODEL / "1" / name)
    (staging / CLASSIFIER_MODEL / "1" / PROVENANCE_FILE).write_text(provenance.to_json())
    _replace(staging, output)


def _replace(staging: Path, output: Path) -> None:
    """Swap model by model, leaving anything else in `output` (a README, other models) alone."""
    output.mkdir(parents=True, exist_ok=True)
    for model in sorted(MODEL_SOURCES):
        shutil.rmtree(output / model, ignore_errors=True)
        (staging / model).rename(output / model)
    shutil.rmtree(staging)
