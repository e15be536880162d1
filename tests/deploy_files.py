"""What the docker/ tests share: the files they read, a Dockerfile parser, the Kubernetes objects,
the metrics queried, the tools they run, and the fixtures the image and compose tests both use."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from emotion_build.cli import _parser
from emotion_build.repository.description import (
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    PREPROCESS_MODEL,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


DOCKER = REPO_ROOT / "docker"


DOCKERFILE = DOCKER / "Dockerfile"


K8S = DOCKER / "k8s"


COMPOSE = DOCKER / "compose.yaml"


DASHBOARD = DOCKER / "grafana" / "dashboards" / "emotion.json"


ADAPTER_VALUES = K8S / "prometheus-adapter-values.yaml"


DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"


VENV_BIN = Path(sys.executable).parent


K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes the manifests claim (docs/deploy.md) and the newest schema we have."""


K8S_OUTSIDE_KUSTOMIZATION = {"podmonitor.yaml", "prometheus-adapter-values.yaml"}
"""Applied separately: a Prometheus Operator CRD and Helm values, each documented in its file."""


MODEL_NAMES = {ENSEMBLE_MODEL, PREPROCESS_MODEL, CLASSIFIER_MODEL}


HEALTH_READY = "/v2/health/ready"


HEALTH_LIVE = "/v2/health/live"


_METRIC = re.compile(r"\bnv_[a-z_]+\b")


_MODEL_LABEL = re.compile(r'\bmodel="([^"]*)"')


@dataclasses.dataclass(frozen=True, slots=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, in the stage it belongs to."""

    stage: str | None
    """The `AS` name of its stage; None before the first FROM (global build args)."""
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    stage: str | None = None
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)\s*$", args, flags=re.IGNORECASE)
            stage = match[1] if match else args
        instructions.append(Instruction(stage, keyword, args.strip(), start))
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARGs before the first FROM, with their defaults: the build args every stage can see."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.stage is not None:
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            values[name] = default.strip('"')
    return values


def stage(instructions: list[Instruction], name: str) -> list[Instruction]:
    found = [i for i in instructions if i.stage == name]
    assert found, f"docker/Dockerfile has no stage named {name!r}"
    return found


def copy_from(instructions: list[Instruction], source_stage: str) -> tuple[str, str]:
    """(source, destination) of the one `COPY --from=<source_stage>`."""
    (args,) = [i.args for i in instructions if i.keyword == "COPY" and f"--from={source_stage}" in i.args]
    *_, source, destination = args.split()
    return source, destination


def serve_ports() -> dict[str, int]:
    """The ports `python -m emotion_build serve` uses by default: the project's one statement of them."""
    defaults = _parser().parse_args(["serve"])
    return {"http": defaults.http_port, "grpc": defaults.grpc_port, "metrics": defaults.metrics_port}


def pins(path: Path) -> dict[str, Requirement]:
    """Requirement lines of a pip requirements file, by canonical name (editable installs skipped)."""
    found: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization() -> dict[str, Any]:
    (doc,) = yaml_documents(K8S / "kustomization.yaml")
    return doc


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object kustomization.yaml applies, by (kind, name)."""
    objects = {}
    for resource in kustomization()["resources"]:
        for doc in yaml_documents(K8S / resource):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for (k, _), doc in objects.items() if k == kind]
    return found


def the_container(deployment: dict[str, Any], name: str = "triton") -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == name]
    return container


def pod_ports(deployment: dict[str, Any]) -> dict[str, int]:
    """Every named container port of the pod (a Service's named targetPort may be any container's)."""
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def adapter_rule() -> dict[str, Any]:
    (values,) = yaml_documents(ADAPTER_VALUES)
    rules: list[dict[str, Any]] = values["rules"]["custom"]
    (rule,) = rules
    return rule


def dashboard_queries() -> dict[str, list[str]]:
    """PromQL of every dashboard panel, by panel title."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in panels}


def all_promql() -> list[str]:
    rule = adapter_rule()
    return [rule["seriesQuery"], rule["metricsQuery"], *(q for qs in dashboard_queries().values() for q in qs)]


def load_check_repository() -> ModuleType:
    """docker/check_repository.py, the script the export stage runs, imported from its file."""
    spec = importlib.util.spec_from_file_location("check_repository", DOCKER / "check_repository.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool(name: str) -> str:
    found = VENV_BIN / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} is not installed: `pip install -r requirements.txt` (it is pinned there)")
    return on_path


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def check_repository() -> ModuleType:
    return load_check_repository()


@pytest.fixture(scope="module")
def local_torch_release(check_repository: ModuleType) -> str:
    import torch

    return str(check_repository.torch_release(torch.__version__))


SECOND_MODEL = "second"
"""The name the export stage's MODELS build arg gives a further checkpoint here."""


@pytest.fixture(scope="module")
def export_stage(
    dockerfile: list[Instruction],
    tiny_model_dir: Path,
    local_torch_release: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Run the export stage's own RUN line from docker/Dockerfile, as written, on the tiny checkpoint.

    Only what Docker would supply differs: the build args (MODEL is the tiny checkpoint, MODELS the same
    checkpoint again under SECOND_MODEL, EXPECTED_TORCH the torch installed here) and the output
    directory, moved under a temporary directory.
    """
    (run,) = [i.args for i in stage(dockerfile, "export") if i.keyword == "RUN" and "emotion_build export" in i.args]
    export_dir, _ = copy_from(stage(dockerfile, "serve"), "export")
    output = tmp_path_factory.mktemp("docker-export") / "repository"
    command = re.sub(r"--mount=\S+\s+", "", run)
    build_args = {
        "MODEL": str(tiny_model_dir),
        "MODELS": f"{SECOND_MODEL}={tiny_model_dir}",
        "EXPORT_ARGS": "",
        "EXPECTED_TORCH": local_torch_release,
    }
    for name, value in build_args.items():
        # Docker substitutes the text, then the shell splits it: quoted stays one word, bare splits.
        command = command.replace(f'"${{{name}}}"', shlex.quote(value)).replace(f"${{{name}}}", value)
    # What is left is the shell's own: the loop over MODELS' NAME=MODEL pairs.
    assert not re.search(r"\$\{(?!pair[%#])", command), f"unsubstituted build arg in {command!r}"
    command = re.sub(rf"(?<![\w/]){re.escape(export_dir)}(?![\w/])", str(output), command)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"the export stage failed:\n{command}\n{result.stdout}\n{result.stderr}"
    assert "complete --target gpu repository" in result.stdout
    return output
