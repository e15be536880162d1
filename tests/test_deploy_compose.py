"""docker/compose.yaml: the compose schema, the GPU service and its health checks, the dashboard,
and the metric names a real tritonserver exports."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from deploy_files import (
    _METRIC,
    _MODEL_LABEL,
    COMPOSE,
    DASHBOARD,
    DOCKERFILE,
    HEALTH_READY,
    MODEL_NAMES,
    all_promql,
    dashboard_queries,
    serve_ports,
    tool,
    yaml_documents,
)

from emotion_build.repository.description import (
    AUDIO_INPUT,
    CLASSIFIER_MODEL,
    ENSEMBLE_MODEL,
)
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer


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
