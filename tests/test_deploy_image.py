"""docker/Dockerfile: lint, the release pair and pins, the export stage run here, the serve stage,
the build context, and docs/deploy.md."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from deploy_files import (
    DEPLOY_DOC,
    DOCKER,
    DOCKERFILE,
    HEALTH_READY,
    REPO_ROOT,
    SECOND_MODEL,
    Instruction,
    copy_from,
    global_args,
    k8s_objects,
    pins,
    serve_ports,
    stage,
    tool,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from emotion_build.repository.description import CLASSIFIER_MODEL, ModelNames
from emotion_build.repository.writer import MODEL_SOURCES


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", "--disable-ignore-pragma", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_release_pair_is_written_once_as_build_args_and_documented(dockerfile: list[Instruction]) -> None:
    build_args = global_args(dockerfile)
    release, torch_version = build_args["NGC_RELEASE"], build_args["EXPECTED_TORCH"]
    assert re.fullmatch(r"\d{2}\.\d{2}", release) and re.fullmatch(r"\d+\.\d+", torch_version)
    images = {i.stage: i.args for i in dockerfile if i.keyword == "FROM"}
    assert images["export"].startswith("nvcr.io/nvidia/pytorch:${NGC_RELEASE}-py3 ")
    assert images["serve"].startswith("nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3 ")
    # Defaults appear once: stages only redeclare the names.
    for name in ("NGC_RELEASE", "EXPECTED_TORCH"):
        declared = [i for i in dockerfile if i.keyword == "ARG" and i.args.split("=")[0] == name]
        assert [i.stage for i in declared if "=" in i.args] == [None], declared
    for doc in (DEPLOY_DOC, REPO_ROOT / "README.md"):
        text = doc.read_text()
        assert f"NGC_RELEASE={release}" in text and f"EXPECTED_TORCH={torch_version}" in text, doc


def test_release_torch_can_run_the_pinned_transformers(dockerfile: list[Instruction]) -> None:
    """NGC ships torch pre-releases (2.7.0a0+...), and transformers turns torch off below its minimum:
    the release's torch, read as such a pre-release, must satisfy what the pinned transformers needs."""
    from transformers import __version__ as transformers_version
    from transformers.dependency_versions_table import deps

    pinned = pins(DOCKER / "export-requirements.txt")["transformers"]
    assert pinned.specifier.contains(transformers_version), "the installed transformers is not the pinned one"
    needed = Requirement(deps["torch"]).specifier
    ngc_torch = Version(f"{global_args(dockerfile)['EXPECTED_TORCH']}.0a0")
    assert needed.contains(ngc_torch, prereleases=True), (
        f"transformers {transformers_version} needs torch{needed}; NGC's torch {ngc_torch} is too old"
    )


def test_image_pins_equal_the_test_environment() -> None:
    tested = pins(REPO_ROOT / "requirements.txt")
    export, serve = pins(DOCKER / "export-requirements.txt"), pins(DOCKER / "serve-requirements.txt")
    for name, requirement in {**export, **serve}.items():
        assert str(requirement.specifier).startswith("=="), f"{requirement} is not pinned"
        assert str(requirement) == str(tested[name]), f"{requirement} differs from requirements.txt's {tested[name]}"
    assert "torch" not in export, "the export stage must keep its container's torch (the release pair)"
    build_dependencies = [r for r in importlib.metadata.requires("emotion-build") or () if "extra ==" not in r]
    needed = {canonicalize_name(Requirement(d).name) for d in build_dependencies} - {"torch"}
    assert needed <= set(export), f"the export stage leaves {needed - set(export)} unpinned"


def test_serve_requirements_cover_what_the_python_backend_models_import() -> None:
    """Third-party imports of the model.py files the gpu repository carries (per the build's own table)."""
    from importlib import resources

    sources = resources.files("emotion_build.triton_models")
    shipped = {Path(destination).stem for table in MODEL_SOURCES.values() for _, destination in table["gpu"]}
    imported: set[str] = set()
    for table in MODEL_SOURCES.values():
        for source, _ in table["gpu"]:
            tree = ast.parse(sources.joinpath(source).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - shipped - {"__future__", "triton_python_backend_utils"}
    assert third_party, "expected the preprocess model to import numpy"
    assert {canonicalize_name(name) for name in third_party} <= set(pins(DOCKER / "serve-requirements.txt"))


def test_export_stage_runs_here_and_writes_the_build_layout(export_stage: Path, check_repository: ModuleType) -> None:
    written = sorted(str(p.relative_to(export_stage)) for p in export_stage.rglob("*") if p.is_file())
    second = check_repository.expected_files("gpu", ModelNames.of(SECOND_MODEL))
    assert written == sorted([*check_repository.expected_files("gpu"), *second])


def test_export_stage_fails_when_the_torch_is_not_the_releases(
    export_stage: Path, dockerfile: list[Instruction], local_torch_release: str
) -> None:
    release_torch = global_args(dockerfile)["EXPECTED_TORCH"]
    other = release_torch if release_torch != local_torch_release else "1.0"
    result = subprocess.run(
        [sys.executable, str(DOCKER / "check_repository.py"), str(export_stage), "--expected-torch", other],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "export.json says model.pt was written by torch" in result.stderr and other in result.stderr


def test_repository_check_rejects_incomplete_and_cpu_repositories(
    export_stage: Path, tiny_repository: Path, check_repository: ModuleType, local_torch_release: str, tmp_path: Path
) -> None:
    error = check_repository.RepositoryCheckError
    with pytest.raises(error, match="--target cpu"):
        check_repository.check_repository(tiny_repository, target="gpu", expected_torch=local_torch_release)
    broken = tmp_path / "repository"
    shutil.copytree(export_stage, broken)
    (broken / CLASSIFIER_MODEL / "1" / "model.pt").unlink()
    with pytest.raises(error, match=f"missing {CLASSIFIER_MODEL}/1/model.pt"):
        check_repository.check_repository(broken, target="gpu", expected_torch=local_torch_release)
    assert check_repository.torch_release("2.7.0a0+6c54963f75.nv25.02") == "2.7"
    assert check_repository.torch_release("2.13.0+cpu") == "2.13"
    with pytest.raises(error):
        check_repository.torch_release("nightly")


def test_serve_stage_serves_the_export_as_non_root_on_the_build_ports(dockerfile: list[Instruction]) -> None:
    serve = stage(dockerfile, "serve")
    ports = serve_ports()
    source, destination = copy_from(serve, "export")
    assert any(f"--output {source}" in i.args for i in stage(dockerfile, "export") if i.keyword == "RUN")
    (cmd,) = [json.loads(i.args) for i in serve if i.keyword == "CMD"]
    assert cmd[0] == "tritonserver" and f"--model-repository={destination}" in cmd
    assert {f"--{name}-port={port}" for name, port in ports.items()} <= set(cmd)
    assert "--strict-readiness=true" in cmd
    assert "--model-control-mode=none" in cmd, "no client may load or unload models (as `serve` does)"
    # The build writes complete configs; with auto-complete on, the libtorch backend logs that it skips it.
    assert "--disable-auto-complete-config" in cmd, "as `serve` starts the server"
    assert not [i for i in serve if i.keyword == "ENTRYPOINT"], "keep NVIDIA's entrypoint (CUDA compat setup)"
    (expose,) = [i.args for i in serve if i.keyword == "EXPOSE"]
    assert {int(p) for p in expose.split()} == set(ports.values())
    (healthcheck,) = [i.args for i in serve if i.keyword == "HEALTHCHECK"]
    assert f"localhost:{ports['http']}{HEALTH_READY}" in healthcheck
    users = [i for i in serve if i.keyword == "USER"]
    assert users and users[-1].args.split(":")[0].isdigit() and int(users[-1].args.split(":")[0]) != 0
    assert all(i.line < users[-1].line for i in serve if i.keyword in ("RUN", "COPY")), "USER must come last"


def test_build_context_allow_list_sends_what_the_dockerfile_copies(dockerfile: list[Instruction]) -> None:
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the ignore file should allow-list, so .venv and model weights stay out"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for instruction in dockerfile:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            *sources, _ = instruction.args.split()
            for source in sources:
                source = source.rstrip("/")
                assert (REPO_ROOT / source).exists(), f"{instruction} copies a path that does not exist"
                assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is not sent"


def test_gpu_model_carries_no_cpu_device_constants(export_stage: Path) -> None:
    """libtorch moves parameters to the instance's GPU, but not what tracing froze into the code: a
    `torch.device("cpu")` argument, or a tensor constant with dimensions (0-d ones mix with CUDA)."""
    import torch

    module = torch.jit.load(str(export_stage / CLASSIFIER_MODEL / "1" / "model.pt"))  # type: ignore[no-untyped-call]

    def baked(scripted: Any, path: str) -> Iterator[str]:
        code, constants = scripted.code_with_constants
        for line in code.splitlines():
            if 'torch.device("cpu")' in line:
                yield f"{path}: {line.strip()}"
        for name, value in constants.const_mapping.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                yield f"{path}: constant {name} of shape {tuple(value.shape)}"
        for name, child in scripted.named_children():
            if hasattr(child, "code_with_constants"):
                yield from baked(child, f"{path}.{name}")

    found = list(baked(module, "model"))
    assert not found, "\n".join(found)


def test_deploy_doc_gives_the_commands_and_names_real_files() -> None:
    docs = DEPLOY_DOC.read_text()
    for heading in ("## Build", "## Run", "## Scale", "## Observe", "## What only Docker and a GPU can check"):
        assert heading in docs, heading
    for command in (
        "docker build -f docker/Dockerfile",
        "docker compose -f docker/compose.yaml up",
        "kubectl apply -k docker/k8s",
        "prometheus-adapter-values.yaml",
        "EmotionClient([",
    ):
        assert command in docs, command
    services = {name for (kind, name) in k8s_objects() if kind == "Service"}
    assert all(name in docs for name in services)
    for path in set(re.findall(r"\b(?:docker|docs|build|tests)/[\w./-]*\w", docs)):
        assert (REPO_ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"


def test_deploy_python_is_lint_clean() -> None:
    """docker/ is outside `make lint`'s paths; hold its script to the same rules."""
    target = str(DOCKER / "check_repository.py")
    for args in (["check", target], ["format", "--check", target]):
        result = subprocess.run([tool("ruff"), *args], capture_output=True, text=True, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
