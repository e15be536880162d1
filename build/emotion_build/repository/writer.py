"""Write one checkpoint's models into a Triton repository: configs, labels, the Python models, the
artifact and its provenance; as the only model of its name, or as a new version beside the others."""

from __future__ import annotations

import os
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
    ModelNames,
    Provenance,
    Target,
)
from .layout import VersionRequest, destination_version, recorded, versions

__all__ = ["MODEL_SOURCES", "pin_version", "write_repository"]

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
"""Which source files of `triton_models` each served model needs, and the name each takes there; keyed by
the default checkpoint's model names (ModelNames.of("emotion")), which name each model's role."""


def _roles(names: ModelNames) -> dict[str, str]:
    """Each of the checkpoint's model names by the role (the default name) MODEL_SOURCES keys it under."""
    return {
        names.preprocess: PREPROCESS_MODEL,
        names.classifier: CLASSIFIER_MODEL,
        names.ensemble: ENSEMBLE_MODEL,
        names.stream: STREAM_MODEL,
    }


def write_repository(
    output: Path,
    description: ModelDescription,
    target: Target,
    *,
    artifacts: Mapping[str, Path],
    provenance: Provenance,
    version: VersionRequest = None,
) -> int:
    """Lay the checkpoint's models out beside `output` and move them in, so a failed build never leaves
    half a model; other models in `output` stay as they are. Returns the version written.

    Without `version` the checkpoint's models are replaced whole (version 1). With one, the new version
    goes beside the others and the configs become the new version's: Triton serves the newest (its
    default policy), and `pin_version` goes back. `artifacts` are the classifier's files by their name
    in its version directory (model.pt, or the OpenVINO IR's model.xml and model.bin)."""
    output = output.resolve()
    names = description.names
    number = destination_version(output, names, version)
    staging = output.with_name(f".{output.name}.{names.ensemble}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    sources = resources.files("emotion_build.triton_models")
    roles = _roles(names)
    for name, config in all_configs(description, target).items():
        directory = staging / name / str(number)
        directory.mkdir(parents=True)
        (staging / name / "config.pbtxt").write_text(render(config))
        for source, destination in MODEL_SOURCES[roles[name]][target]:
            (directory / destination).write_text(sources.joinpath(source).read_text())
    (staging / names.ensemble / LABELS_FILE).write_text(_labels_text(description))
    for name, artifact in artifacts.items():
        shutil.copyfile(artifact, staging / names.classifier / str(number) / name)
    (staging / names.classifier / str(number) / PROVENANCE_FILE).write_text(provenance.to_json())
    output.mkdir(parents=True, exist_ok=True)
    if version is None:
        for name in names.all:
            shutil.rmtree(output / name, ignore_errors=True)
            (staging / name).rename(output / name)
    else:
        # The version's files first, then the configs that describe it: a server polling the repository
        # never reads a config whose version has no files.
        for name in names.all:
            (output / name).mkdir(exist_ok=True)
            (staging / name / str(number)).rename(output / name / str(number))
        for name in names.all:
            _swap_in(staging / name / "config.pbtxt", output / name / "config.pbtxt")
        _swap_in(staging / names.ensemble / LABELS_FILE, output / names.ensemble / LABELS_FILE)
    shutil.rmtree(staging)
    return number


def pin_version(repository: Path, name: str, version: int | None) -> int:
    """Serve `version` of model `name` alone (the configs rendered again from its export.json), or with
    None the newest version again. The server reads the change when the model is loaded again (explicit
    model control) or polled. Returns the version the configs now describe."""
    repository = repository.resolve()
    names = ModelNames.of(name)
    existing = versions(repository / names.classifier)
    if not existing:
        raise FileNotFoundError(f"{repository} has no model '{name}'")
    number = existing[-1] if version is None else version
    record = recorded(repository, names, number)
    description = record.description
    if description.name != name:  # exported before names were recorded: the version is the named model's
        description = ModelDescription.from_record({**description.record(), "name": name})
    configs = all_configs(description, record.target, pinned=version)
    staging = repository.with_name(f".{repository.name}.{name}.pin")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for model, config in configs.items():
        (staging / model).mkdir()
        (staging / model / "config.pbtxt").write_text(render(config))
        _swap_in(staging / model / "config.pbtxt", repository / model / "config.pbtxt")
    (staging / LABELS_FILE).write_text(_labels_text(description))
    _swap_in(staging / LABELS_FILE, repository / names.ensemble / LABELS_FILE)
    shutil.rmtree(staging)
    return number


def _labels_text(description: ModelDescription) -> str:
    return "".join(f"{label}\n" for label in description.labels)


def _swap_in(source: Path, destination: Path) -> None:
    """Replace one file in a single rename, so Triton reads the old file or the new one, never half."""
    temporary = destination.with_name(f".{destination.name}.new")
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)
