"""The production deployment (docker/, docs/deploy.md), checked without Docker, a GPU or a cluster.

What runs here runs for real: the export stage's own command line from docker/Dockerfile (with the
tiny checkpoint), its repository check, hadolint, the compose file against the Compose
Specification's schema, the Kubernetes manifests against the API schemas of the oldest and newest
supported releases, and every metric name the dashboards and the autoscaler use against what a real
tritonserver exposes. Every value the deployment shares with the build (model names, ports, the
repository layout, pinned versions) is compared with the build's own source, not with a copy here.
What needs Docker and a GPU is listed in docs/deploy.md.
"""

from __future__ import annotations

import ast
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
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from emotion_build.cli import _parser
from emotion_build.repository.description import (
    AUDIO_INPUT,
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
    PREPROCESS_MODEL,
    BatchingSettings,
)
from emotion_build.repository.writer import MODEL_SOURCES
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer

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


# --------------------------------------------------------------------------------------- helpers


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


# -------------------------------------------------------------------------------------- fixtures


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


@pytest.fixture(scope="module")
def export_stage(
    dockerfile: list[Instruction],
    tiny_model_dir: Path,
    local_torch_release: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Run the export stage's own RUN line from docker/Dockerfile, as written, on the tiny checkpoint.

    Only what Docker would supply differs: the build args (MODEL is the tiny checkpoint, EXPECTED_TORCH
    the torch installed here) and the output directory, moved under a temporary directory.
    """
    (run,) = [i.args for i in stage(dockerfile, "export") if i.keyword == "RUN" and "emotion_build export" in i.args]
    export_dir, _ = copy_from(stage(dockerfile, "serve"), "export")
    output = tmp_path_factory.mktemp("docker-export") / "repository"
    command = re.sub(r"--mount=\S+\s+", "", run)
    for name, value in {"MODEL": str(tiny_model_dir), "EXPORT_ARGS": "", "EXPECTED_TORCH": local_torch_release}.items():
        # Docker substitutes the text, then the shell splits it: quoted stays one word, bare splits.
        command = command.replace(f'"${{{name}}}"', shlex.quote(value)).replace(f"${{{name}}}", value)
    assert "${" not in command, f"unsubstituted build arg in {command!r}"
    command = re.sub(rf"(?<![\w/]){re.escape(export_dir)}(?![\w/])", str(output), command)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"the export stage failed:\n{command}\n{result.stdout}\n{result.stderr}"
    assert "complete --target gpu repository" in result.stdout
    return output


@pytest.fixture(scope="module")
def scrape(triton: TritonServer) -> dict[str, set[str]]:
    """Metric families a real tritonserver exposes after serving a few requests, with their model labels."""
    client = grpcclient.InferenceServerClient(triton.endpoints.grpc_url)
    audio = (0.1 * np.random.default_rng(0).standard_normal((1, 16000))).astype(np.float32)
    request = grpcclient.InferInput(AUDIO_INPUT, list(audio.shape), "FP32")
    request.set_data_from_numpy(audio)
    for _ in range(3):
        client.infer(ENSEMBLE_MODEL, [request])
    client.close()
    with urllib.request.urlopen(triton.endpoints.metrics_url, timeout=10) as response:
        text = response.read().decode()
    families: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            families.setdefault(name, set()).update(_MODEL_LABEL.findall(line))
    return families


@pytest.fixture(scope="module")
def libtritonserver() -> bytes:
    """The server library of the pip tritonserver: built with GPU metrics, though this host has no GPU."""
    for directory in find_tritonserver().library_path:
        for library in sorted(directory.glob("libtritonserver*.so*")):
            return library.read_bytes()
    pytest.fail("libtritonserver is missing from the nvidia-pytriton install")


# ------------------------------------------------------------------------------------ Dockerfile


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
    assert written == list(check_repository.expected_files("gpu"))


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


# --------------------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_image_on_a_gpu_with_health_and_monitoring() -> None:
    (compose,) = yaml_documents(COMPOSE)
    services = compose["services"]
    ports = serve_ports()
    triton = services["triton"]
    assert (COMPOSE.parent / triton["build"]["context"] / triton["build"]["dockerfile"]).resolve() == DOCKERFILE
    # Host ports are the server's; gRPC and HTTP lead to the edge in Triton's network namespace.
    published = dict(mapping.split(":") for mapping in triton["ports"])
    assert {int(host) for host in published} == set(ports.values())
    assert int(published[str(ports["metrics"])]) == ports["metrics"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert "gpu" in device["capabilities"] and device["driver"] == "nvidia"
    assert f"http://localhost:{ports['http']}{HEALTH_READY}" in triton["healthcheck"]["test"]
    assert triton["shm_size"]
    for service in services.values():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (COMPOSE.parent / host).exists(), f"compose mounts {host}, which does not exist"
    # Prometheus scrapes the triton service's metrics port.
    prometheus_mount = next(v for v in services["prometheus"]["volumes"] if v.endswith("prometheus.yml:ro"))
    (prometheus,) = yaml_documents(COMPOSE.parent / prometheus_mount.split(":")[0])
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"triton:{ports['metrics']}"]
    assert job["metrics_path"] == "/metrics"
    # Grafana reads the datasource and the dashboard from where compose mounts them.
    grafana = services["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1)[::-1] for v in grafana["volumes"] if v.startswith("."))
    provisioning = COMPOSE.parent / mounts["/etc/grafana/provisioning"]
    (datasources,) = yaml_documents(provisioning / "datasources" / "prometheus.yaml")
    (datasource,) = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    (providers,) = yaml_documents(provisioning / "dashboards" / "emotion.yaml")
    dashboards_in_container = providers["providers"][0]["options"]["path"]
    assert (COMPOSE.parent / mounts[dashboards_in_container] / DASHBOARD.name).resolve() == DASHBOARD
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_in_container}/{DASHBOARD.name}"
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]


def test_dashboard_shows_throughput_queue_time_batch_size_and_gpu_utilisation() -> None:
    queries = dashboard_queries()
    by_topic = {
        topic: [q for title, qs in queries.items() if topic in title.lower() for q in qs]
        for topic in ("throughput", "queue time", "batch size", "gpu utilisation")
    }
    assert all(by_topic.values()), by_topic
    assert any(f'nv_inference_request_success{{model="{ENSEMBLE_MODEL}"}}' in q for q in by_topic["throughput"])
    assert any(f'nv_inference_queue_duration_us{{model="{CLASSIFIER_MODEL}"}}' in q for q in by_topic["queue time"])
    (batch,) = by_topic["batch size"]
    numerator, _, denominator = batch.partition(" / ")
    assert f'nv_inference_count{{model="{CLASSIFIER_MODEL}"}}' in numerator
    assert f'nv_inference_exec_count{{model="{CLASSIFIER_MODEL}"}}' in denominator
    assert any("nv_gpu_utilization" in q for q in by_topic["gpu utilisation"])


# ------------------------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_api_schema(version: str) -> None:
    for resource in kustomization()["resources"]:
        for doc in yaml_documents(K8S / resource):
            kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_applies_every_manifest_and_names_the_image() -> None:
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == present - K8S_OUTSIDE_KUSTOMIZATION
    deployment = one(k8s_objects(), "Deployment")
    images = {image["name"] for image in kustomization()["images"]}
    (compose,) = yaml_documents(COMPOSE)
    for name in ("triton", "edge"):
        image = the_container(deployment, name)["image"].split(":")[0]
        assert image in images and compose["services"][name]["image"].split(":")[0] == image


def test_deployment_asks_for_a_gpu_and_probes_triton_health(dockerfile: list[Instruction]) -> None:
    deployment = one(k8s_objects(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = the_container(deployment)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": serve_ports()["metrics"]}
    # gRPC and HTTP are on loopback behind the edge, so the probes ask from inside the container.
    local = f"http://127.0.0.1:{serve_ports()['http']}"
    probes = {kind: container[kind]["exec"]["command"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"][-1] == probes["startupProbe"][-1] == f"{local}{HEALTH_READY}"
    assert probes["livenessProbe"][-1] == f"{local}{HEALTH_LIVE}"
    assert all(command[:2] == ["curl", "-fsS"] for command in probes.values())
    image_uid = int([i for i in stage(dockerfile, "serve") if i.keyword == "USER"][-1].args.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == image_uid
    shm = next(v for v in container["volumeMounts"] if v["mountPath"] == "/dev/shm")
    assert next(v for v in pod["volumes"] if v["name"] == shm["name"])["emptyDir"]["medium"] == "Memory"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == serve_ports()["metrics"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"


def test_services_reach_the_pods_over_grpc_and_http() -> None:
    objects = k8s_objects()
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = pod_ports(deployment)
    services = [doc for (kind, _), doc in objects.items() if kind == "Service"]
    assert any(s["spec"].get("clusterIP") == "None" for s in services), "a headless Service for client-side balancing"
    assert any(
        s["spec"].get("type", "ClusterIP") == "ClusterIP" and s["spec"].get("clusterIP") != "None" for s in services
    )
    for service in services:
        assert selects(service["spec"]["selector"], labels)
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert {"grpc", "http"} <= set(ports)
        for name, port in ports.items():
            assert port["targetPort"] == name and name in port_names
            assert port["port"] == serve_ports()[name], "clients keep the server's ports"


def test_autoscaler_scales_on_the_adapters_queue_time_metric() -> None:
    objects = k8s_objects()
    deployment, hpa, pdb = (
        one(objects, kind) for kind in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget")
    )
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    rule = adapter_rule()
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")
    assert f'model="{CLASSIFIER_MODEL}"' in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # The dynamic batcher waits up to max_queue_delay_us on purpose; scaling on that would be noise.
    assert float(metric["pods"]["target"]["averageValue"]) >= 5 * BatchingSettings().max_queue_delay_us
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert hpa["spec"]["minReplicas"] > pdb["spec"].get("maxUnavailable", 0) >= 1


def test_podmonitor_scrapes_the_metrics_port() -> None:
    (monitor,) = yaml_documents(K8S / "podmonitor.yaml")
    deployment = one(k8s_objects(), "Deployment")
    assert selects(monitor["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in the_container(deployment)["ports"]} and endpoint["port"] == "metrics"


# ------------------------------------------------------------------- metric names vs. the server


def test_metric_names_and_models_exist_in_a_real_tritonserver(
    scrape: dict[str, set[str]], libtritonserver: bytes
) -> None:
    """Every Triton metric the dashboard and the adapter name, against a real server's /metrics. GPU
    metrics are absent on this CPU host, so those are looked up in the server library that emits them."""
    queries = all_promql()
    names = {name for query in queries for name in _METRIC.findall(query)}
    assert {"nv_inference_queue_duration_us", "nv_inference_count", "nv_inference_exec_count"} <= names
    for name in sorted(names):
        if name.startswith("nv_gpu_"):
            assert name.encode() in libtritonserver, f"tritonserver has no metric {name}"
        else:
            assert name in scrape, f"tritonserver exposes no {name}; it has {sorted(scrape)}"
    for query in queries:
        for name, model in re.findall(r'\b(nv_[a-z_]+)\{[^}]*\bmodel="([^"]*)"', query):
            assert model in MODEL_NAMES, f"{query} names model {model!r}, not one the build writes"
            assert model in scrape[name], f"the server reports no {name} for model {model!r}"


# ------------------------------------------------------------- what only a GPU would otherwise show


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


# -------------------------------------------------------------------------------------- the docs


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
