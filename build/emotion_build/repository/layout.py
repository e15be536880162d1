"""What a repository already holds: the emotion models in it, their versions, and whether a new model
or version may go where the export wants to put it. Read from the files the writer wrote, nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, cast

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .description import PROVENANCE_FILE, ModelDescription, ModelNames, Provenance, Target

__all__ = [
    "RepositoryClashError",
    "ServedModelRecord",
    "VersionRequest",
    "destination_version",
    "emotion_models",
    "read_config",
    "recorded",
    "served_versions",
    "versions",
]

VersionRequest = int | Literal["next"] | None
"""None: the model anew, as version 1 (replacing the model of that name); N: version N beside the
others; "next": one past the newest."""


class RepositoryClashError(ValueError):
    """The export would overwrite something it does not own; the message says what and what to do."""


def read_config(model_dir: Path) -> mc.ModelConfig | None:
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return None
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def emotion_models(repository: Path) -> dict[str, ModelNames]:
    """The checkpoints in `repository` by name: every ensemble whose config describes an emotion model."""
    found: dict[str, ModelNames] = {}
    if not repository.is_dir():
        return found
    for model_dir in sorted(path for path in repository.iterdir() if path.is_dir()):
        config = read_config(model_dir)
        if config is not None and config.platform == "ensemble" and "labels" in config.parameters:
            try:
                found[model_dir.name] = ModelNames.of(model_dir.name)
            except ValueError:
                continue  # not a name this build writes: someone else's ensemble
    return found


def versions(model_dir: Path) -> tuple[int, ...]:
    """Triton's version directories of one model, ascending."""
    if not model_dir.is_dir():
        return ()
    return tuple(sorted(int(path.name) for path in model_dir.iterdir() if path.is_dir() and path.name.isdigit()))


def destination_version(repository: Path, names: ModelNames, request: VersionRequest) -> int:
    """The version number the export writes, or a RepositoryClashError naming what is in the way."""
    models = emotion_models(repository)
    for other, other_names in models.items():
        if other != names.ensemble and set(other_names.all) & set(names.all):
            clash = sorted(set(other_names.all) & set(names.all))[0]
            raise RepositoryClashError(
                f"model name '{names.ensemble}' clashes with model '{other}' in {repository} (both use "
                f"'{clash}'); choose another --name"
            )
    ours = set(models[names.ensemble].all) if names.ensemble in models else set()
    for name in names.all:
        if (repository / name).exists() and name not in ours:
            raise RepositoryClashError(
                f"'{name}' in {repository} is not part of model '{names.ensemble}'; choose another --name"
            )
    existing = versions(repository / names.classifier)
    if request is None:
        return 1
    if request == "next":
        return (existing[-1] if existing else 0) + 1
    if request < 1:
        raise RepositoryClashError(f"--version must be a positive integer or 'next', got {request}")
    if request in existing:
        listed = ", ".join(map(str, existing))
        raise RepositoryClashError(
            f"version {request} of model '{names.ensemble}' already exists (versions {listed}); use --version next"
        )
    return request


@dataclasses.dataclass(frozen=True, slots=True)
class ServedModelRecord:
    """One version of one checkpoint as its export recorded it."""

    version: int
    description: ModelDescription
    target: Target
    provenance: Provenance


def recorded(repository: Path, names: ModelNames, version: int) -> ServedModelRecord:
    """The description a version was exported with (its export.json), so its configs can be rendered again."""
    path = repository / names.classifier / str(version) / PROVENANCE_FILE
    if not path.is_file():
        listed = ", ".join(map(str, versions(repository / names.classifier))) or "none"
        raise RepositoryClashError(f"model '{names.ensemble}' has no version {version} (versions: {listed})")
    provenance = Provenance.from_json(path.read_text())
    if provenance.description is None:
        raise RepositoryClashError(
            f"version {version} of model '{names.ensemble}' was exported before exports recorded their "
            "description; export it again"
        )
    target = provenance.target
    if target not in ("gpu", "cpu", "gpu-python"):
        raise RepositoryClashError(f"version {version} of model '{names.ensemble}' names an unknown target {target!r}")
    description = ModelDescription.from_record(provenance.description)
    return ServedModelRecord(version, description, cast(Target, target), provenance)


def served_versions(repository: Path, names: ModelNames) -> tuple[int, ...]:
    """The versions Triton serves of a checkpoint: the pinned one, or the newest (its default policy)."""
    config = read_config(repository / names.classifier)
    if config is not None and config.version_policy.HasField("specific"):
        return tuple(config.version_policy.specific.versions)
    existing = versions(repository / names.classifier)
    return existing[-1:]
