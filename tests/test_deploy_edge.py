"""The edge (Envoy) in front of the production server, and the memory settings the image runs with.

No Envoy binary installs from PyPI or Debian, so its config is checked here for what it must say,
from the Dockerfile's own command run on an exported repository: the request-size caps follow the
export's max duration, every route reaches a cluster that points at Triton's ports, and the
manifests wire the edge in front of Triton. `envoy --mode validate` needs Docker (docs/deploy.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    COMPOSE,
    DOCKERFILE,
    REPO_ROOT,
    Instruction,
    k8s_objects,
    one,
    parse_dockerfile,
    serve_ports,
    stage,
    the_container,
    yaml_documents,
)
from repositories import export_cpu_repository

from emotion_build.cli import _parser
from emotion_build.repository.edge import (
    EDGE_GRPC_PORT,
    EDGE_HTTP_PORT,
    FRAMING_BYTES,
    JSON_BYTES_PER_SAMPLE,
    RequestLimits,
)
from emotion_build.server.memory import GRPC_MEMORY_ARGS, JEMALLOC_CONF, STUB_ENVIRONMENT_SCRIPT

SAMPLE_RATE = 16000
"""The tiny checkpoint's feature extractor rate."""


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def edge_command(dockerfile: list[Instruction]) -> tuple[str, str, str]:
    """The export stage's edge RUN line and the repository and config paths it names."""
    (run,) = [
        i.args for i in stage(dockerfile, "export") if i.keyword == "RUN" and "emotion_build.repository.edge" in i.args
    ]
    match = re.fullmatch(r"python -m emotion_build\.repository\.edge (\S+) (\S+)", run)
    assert match, f"unexpected edge command {run!r}"
    return run, match[1], match[2]


def rendered(dockerfile: list[Instruction], repository: Path, output: Path) -> dict[str, Any]:
    """Run the Dockerfile's edge command on `repository`, as the image build does, and read the result."""
    run, repository_in_image, config_in_image = edge_command(dockerfile)
    command = run.replace(repository_in_image, str(repository)).replace(config_in_image, str(output))
    command = command.replace("python ", f"{sys.executable} ", 1)
    result = subprocess.run(command.split(), capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(output.read_text())
    return config


def listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [entry for entry in config["static_resources"]["listeners"] if entry["name"] == name]
    manager: dict[str, Any] = found["filter_chains"][0]["filters"][0]["typed_config"]
    return {"port": found["address"]["socket_address"]["port_value"], **manager}


def buffer_limit(manager: dict[str, Any]) -> int:
    filters = manager["http_filters"]
    assert filters[0]["name"] == "envoy.filters.http.buffer", "the cap must apply before anything else"
    assert filters[-1]["name"] == "envoy.filters.http.router"
    return int(filters[0]["typed_config"]["max_request_bytes"])


def test_edge_caps_follow_the_exports_max_duration(
    dockerfile: list[Instruction], tiny_repository: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    default_s = _parser().parse_args(["export"]).max_duration_s
    short = export_cpu_repository(tiny_model_dir, tmp_path / "ten-seconds", "--max-duration-s", "10")
    for repository, seconds in ((tiny_repository, default_s), (short, 10.0)):
        config = rendered(dockerfile, repository, tmp_path / f"{seconds:g}.yaml")
        samples = round(seconds * SAMPLE_RATE)
        assert buffer_limit(listener(config, "grpc")) == samples * 4 + FRAMING_BYTES
        assert buffer_limit(listener(config, "http")) == samples * JSON_BYTES_PER_SAMPLE + FRAMING_BYTES
    assert RequestLimits.for_samples(samples).grpc_bytes == samples * 4 + FRAMING_BYTES


def test_edge_routes_reach_tritons_ports_and_refuse_streaming(
    dockerfile: list[Instruction], tiny_repository: Path, tmp_path: Path
) -> None:
    config = rendered(dockerfile, tiny_repository, tmp_path / "envoy.yaml")
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    ports = serve_ports()
    for name, edge_port in (("grpc", EDGE_GRPC_PORT), ("http", EDGE_HTTP_PORT)):
        manager = listener(config, name)
        assert manager["port"] == edge_port
        routes = [r for host in manager["route_config"]["virtual_hosts"] for r in host["routes"]]
        targets = {r["route"]["cluster"] for r in routes if "route" in r}
        (target,) = targets
        endpoint = clusters[target]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": ports[name]}
        (mapper,) = manager["local_reply_config"]["mappers"]
        assert mapper["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] == 413
        assert str(buffer_limit(manager)) in mapper["body"]["inline_string"]
    grpc_routes = listener(config, "grpc")["route_config"]["virtual_hosts"][0]["routes"]
    assert grpc_routes[0]["match"]["prefix"].endswith("/ModelStreamInfer") and "direct_response" in grpc_routes[0]
    options = clusters["triton_grpc"]["typed_extension_protocol_options"]
    assert "http2_protocol_options" in json.dumps(options), "Triton's gRPC needs HTTP/2 upstream"


def test_edge_stage_copies_the_rendered_config_and_serve_stays_the_default_target(
    dockerfile: list[Instruction],
) -> None:
    _, _, config_in_image = edge_command(dockerfile)
    edge = stage(dockerfile, "edge")
    (base,) = [i.args for i in edge if i.keyword == "FROM"]
    assert re.match(r"envoyproxy/envoy:v\d+\.\d+\.\d+ AS edge$", base), "pin Envoy's release"
    (copy,) = [i.args for i in edge if i.keyword == "COPY"]
    assert copy == f"--from=export {config_in_image} /etc/envoy/envoy.yaml"
    (expose,) = [i.args for i in edge if i.keyword == "EXPOSE"]
    assert {int(port) for port in expose.split()} == {EDGE_GRPC_PORT, EDGE_HTTP_PORT}
    stages = [i.stage for i in dockerfile if i.keyword == "FROM"]
    assert stages[-1] == "serve", "`docker build` without --target must still build the server"


def test_image_runs_tritonserver_with_the_launchers_memory_bounds(dockerfile: list[Instruction]) -> None:
    serve = stage(dockerfile, "serve")
    (cmd,) = [json.loads(i.args) for i in serve if i.keyword == "CMD"]
    assert set(GRPC_MEMORY_ARGS) <= set(cmd)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(i.args.replace("\\", " ") for i in serve if i.keyword == "ENV")))
    assert env["MALLOC_CONF"] == JEMALLOC_CONF
    assert env["LD_PRELOAD"].endswith("/libjemalloc.so.2")
    (write,) = [i.args for i in serve if i.keyword == "RUN" and env["BASH_ENV"] in i.args]
    assert f"printf '{STUB_ENVIRONMENT_SCRIPT.strip()}\\n' > {env['BASH_ENV']}" == write
    runs_before = [i.line for i in serve if i.keyword == "RUN"]
    env_line = next(i.line for i in serve if i.keyword == "ENV")
    assert max(runs_before) < env_line, "no build step should run with jemalloc preloaded"


def test_compose_puts_the_edge_in_tritons_network_namespace() -> None:
    (compose,) = yaml_documents(COMPOSE)
    triton, edge = compose["services"]["triton"], compose["services"]["edge"]
    assert edge["network_mode"] == "service:triton" and edge["build"]["target"] == "edge"
    assert (COMPOSE.parent / edge["build"]["context"] / edge["build"]["dockerfile"]).resolve() == DOCKERFILE
    published = {int(host): int(container) for host, container in (m.split(":") for m in triton["ports"])}
    ports = serve_ports()
    assert published[ports["grpc"]] == EDGE_GRPC_PORT and published[ports["http"]] == EDGE_HTTP_PORT
    assert "ports" not in edge, "a service in another's network namespace publishes through it"


def test_kubernetes_pod_reaches_triton_only_through_the_edge(dockerfile: list[Instruction]) -> None:
    deployment = one(k8s_objects(), "Deployment")
    triton, edge = the_container(deployment, "triton"), the_container(deployment, "edge")
    (cmd,) = [json.loads(i.args) for i in stage(dockerfile, "serve") if i.keyword == "CMD"]
    assert triton["args"] == [*cmd, "--grpc-address=127.0.0.1", "--http-address=127.0.0.1"]
    assert {p["name"]: p["containerPort"] for p in edge["ports"]} == {"grpc": EDGE_GRPC_PORT, "http": EDGE_HTTP_PORT}
    assert edge["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert int(edge["resources"]["limits"]["memory"].removesuffix("Gi")) >= 1
