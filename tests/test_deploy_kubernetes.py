"""docker/k8s: the manifests against the Kubernetes API schema, the kustomization, the GPU and
probes, the Services, the autoscaler and the PodMonitor."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from deploy_files import (
    COMPOSE,
    HEALTH_LIVE,
    HEALTH_READY,
    K8S,
    K8S_OUTSIDE_KUSTOMIZATION,
    K8S_VERSIONS,
    Instruction,
    adapter_rule,
    k8s_objects,
    kustomization,
    one,
    pod_ports,
    selects,
    serve_ports,
    stage,
    the_container,
    yaml_documents,
)

from emotion_build.repository.description import (
    CLASSIFIER_MODEL,
    BatchingSettings,
)


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
