"""Check an exported Triton repository before an image is built around it.

docker/Dockerfile's export stage runs this right after `python -m emotion_build export`: the image
must never carry a half-written repository, a CPU-target one, or a `model.pt` written by a torch
other than the one whose libtorch the Triton image of the same NGC release loads (the release pair
NGC_RELEASE <-> EXPECTED_TORCH). Everything expected here comes from `emotion_build` itself (model
names, the files `write_repository` lays out, the provenance record), so it cannot drift from the
build. Exit status 0: fit to serve; 1: not, with the reason on stderr.

    python docker/check_repository.py /repository --target gpu --expected-torch 2.7
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from emotion_build.repository.description import (
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    LABELS_FILE,
    MODEL_FILE,
    PREPROCESS_MODEL,
    PROVENANCE_FILE,
    STREAM_MODEL,
    ModelNames,
    Provenance,
    Target,
)
from emotion_build.repository.layout import emotion_models
from emotion_build.repository.writer import MODEL_SOURCES

__all__ = ["RepositoryCheckError", "check_repository", "expected_files", "main", "torch_release"]

_CONFIG_FILE = "config.pbtxt"
_VERSION = "1"
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?![\d])")


class RepositoryCheckError(RuntimeError):
    """The repository is not fit to go into the image; the message says why and what to do."""


def expected_files(target: Target, names: ModelNames | None = None) -> tuple[str, ...]:
    """Every file `emotion_build.repository.writer.write_repository` writes for `target` for one model
    (the default one unless `names`), relative, sorted."""
    names = names or ModelNames.of(ENSEMBLE_MODEL)
    by_role = {
        PREPROCESS_MODEL: names.preprocess,
        CLASSIFIER_MODEL: names.classifier,
        ENSEMBLE_MODEL: names.ensemble,
        STREAM_MODEL: names.stream,
    }
    files = {
        f"{names.ensemble}/{LABELS_FILE}",
        *(f"{names.classifier}/{_VERSION}/{name}" for name in (MODEL_FILE, PROVENANCE_FILE)),
    }
    for role, sources in MODEL_SOURCES.items():
        files.add(f"{by_role[role]}/{_CONFIG_FILE}")
        files.update(f"{by_role[role]}/{_VERSION}/{destination}" for _, destination in sources[target])
    return tuple(sorted(files))


def torch_release(version: str) -> str:
    """The major.minor of a torch version: "2.7.0a0+6c54963f75.nv25.02" (NGC) -> "2.7", "2.7" -> "2.7"."""
    match = _RELEASE.match(version.strip())
    if match is None:
        raise RepositoryCheckError(f"{version!r} is not a torch version (expected MAJOR.MINOR[...], e.g. 2.7)")
    return f"{match[1]}.{match[2]}"


def check_repository(repository: Path, *, target: Target, expected_torch: str) -> Provenance:
    """Raise RepositoryCheckError unless `repository` is a complete `target` export by `expected_torch`,
    every model in it (the default `emotion` always); the default model's record is returned."""
    if not repository.is_dir():
        raise RepositoryCheckError(f"{repository} is not a directory; did `python -m emotion_build export` run?")
    models = {ENSEMBLE_MODEL: ModelNames.of(ENSEMBLE_MODEL), **emotion_models(repository)}
    provenances = [_check_model(repository, names, target, expected_torch) for names in models.values()]
    return provenances[0]


def _check_model(repository: Path, names: ModelNames, target: Target, expected_torch: str) -> Provenance:
    missing = [name for name in expected_files(target, names) if not (repository / name).is_file()]
    if missing:
        raise RepositoryCheckError(
            f"{repository} is not a complete --target {target} repository: missing {', '.join(missing)}; "
            "export it again with `python -m emotion_build export --target " + target + "`"
        )
    provenance_path = repository / names.classifier / _VERSION / PROVENANCE_FILE
    try:
        provenance = Provenance.from_json(provenance_path.read_text())
    except (ValueError, TypeError) as error:
        raise RepositoryCheckError(f"{provenance_path} is not a provenance record the build writes: {error}") from error
    if provenance.target != target:
        raise RepositoryCheckError(
            f"{provenance_path} says the repository was exported for --target {provenance.target}, "
            f"but this image serves --target {target}"
        )
    expected = torch_release(expected_torch)
    if torch_release(provenance.torch_version) != expected:
        raise RepositoryCheckError(
            f"{provenance_path} says model.pt was written by torch {provenance.torch_version}, but the Triton "
            f"image of this release loads it with libtorch {expected}. Build with the NGC_RELEASE whose PyTorch "
            f"container ships torch {expected}, or set EXPECTED_TORCH to the torch of NGC_RELEASE's PyTorch "
            "container (both are build args at the top of docker/Dockerfile); if pip replaced the container's "
            "torch, pin it back."
        )
    return provenance


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_repository.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--target", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--expected-torch", required=True, help="MAJOR.MINOR of the release's torch, e.g. 2.7")
    args = parser.parse_args(argv)
    try:
        provenance = check_repository(args.repository, target=args.target, expected_torch=args.expected_torch)
    except RepositoryCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    untrained = " UNTRAINED (random weights: the labels are real, the scores are noise)" if provenance.untrained else ""
    print(
        f"{args.repository}: complete --target {provenance.target} repository of {provenance.source_model}, "
        f"written by torch {provenance.torch_version} (release expects {torch_release(args.expected_torch)}), "
        f"transformers {provenance.transformers_version}{untrained}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
