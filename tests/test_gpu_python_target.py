"""The gpu-python target: the Python-backend runner on KIND_GPU, for tritonservers without libtorch.

No GPU is needed here: the configs, the exported files and the runner's choice of device are
checked on the CPU; the GPU run itself is in docs/benchmarks.md ("GPU").
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from emotion_build.cli import main as cli_main
from emotion_build.export.pipeline import describe, export
from emotion_build.model.loading import random_model
from emotion_build.repository.configs import all_configs, render
from emotion_build.repository.description import BatchingSettings, ModelDescription, Provenance

LABELS = ("neu", "hap", "ang", "sad")


def test_gpu_python_classifier_is_the_cpu_runner_on_kind_gpu() -> None:
    description = ModelDescription(labels=LABELS, batching=BatchingSettings.for_target("gpu-python"))
    gpu_python = all_configs(description, "gpu-python")["classifier"]
    cpu = all_configs(description, "cpu")["classifier"]
    assert gpu_python.backend == "python"
    assert [group.kind for group in gpu_python.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    assert gpu_python.parameters["max_padding_fraction"].string_value == "inf"  # a GPU batch runs whole
    for config in (gpu_python, cpu):
        for group in config.instance_group:
            group.ClearField("kind")
    assert gpu_python == cpu


def test_gpu_targets_share_the_gpu_batching_defaults() -> None:
    gpu = BatchingSettings.for_target("gpu")
    assert BatchingSettings.for_target("gpu-python") == gpu
    assert gpu.classifier_instances == 2  # one instance stalled 500 ms at a time under concurrency
    assert gpu.max_batch_size > BatchingSettings.for_target("cpu").max_batch_size
    assert gpu.keep_freed_memory_mb == 0 < BatchingSettings.for_target("cpu").keep_freed_memory_mb


@pytest.fixture(scope="module")
def gpu_python_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    loaded = random_model("tiny", seed=3)
    description = describe(
        loaded, batching=BatchingSettings.for_target("gpu-python"), min_duration_s=0.1, max_duration_s=30.0
    )
    output = tmp_path_factory.mktemp("gpu-python") / "model_repository"
    export(loaded, output, "gpu-python", description, dtype="fp16", check_lengths=[1600, 16000, 40000])
    return output


def test_export_writes_the_runner_and_a_half_precision_model(gpu_python_repository: Path) -> None:
    version = gpu_python_repository / "classifier" / "1"
    assert {"model.py", "heap.py", "ragged.py", "waveform.py", "model.pt"} <= {p.name for p in version.iterdir()}
    provenance = Provenance.from_json((version / "export.json").read_text())
    assert (provenance.target, provenance.dtype, provenance.conv_form) == ("gpu-python", "float16", "matmul")
    assert "KIND_GPU" in (gpu_python_repository / "classifier" / "config.pbtxt").read_text()


class StandInMetricFamily:
    """The stub's `pb_utils.MetricFamily` (a C++ class the stub injects), as far as the runner uses it."""

    GAUGE = "gauge"

    def __init__(self, *, name: str, description: str, kind: str) -> None:
        self.values: dict[str, float] = {}

    def Metric(self, *, labels: dict[str, str]) -> Any:
        family = self

        class Gauge:
            def set(self, value: float) -> None:
                family.values[labels["model"]] = value

        return Gauge()


def load_runner(version: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """classifier/1/model.py as the stub imports it, with a stand-in for Triton's utils module."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.MetricFamily = StandInMetricFamily  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    monkeypatch.syspath_prepend(str(version))
    spec = importlib.util.spec_from_file_location("gpu_python_runner", version / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runner_config(**parameters: str) -> mc.ModelConfig:
    """The gpu-python classifier's config as the export writes it, with extra parameters set."""
    description = ModelDescription(labels=LABELS, batching=BatchingSettings.for_target("gpu-python"))
    config = all_configs(description, "gpu-python")["classifier"]
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def initialize_runner(
    repository: Path, monkeypatch: pytest.MonkeyPatch, config: mc.ModelConfig, kind: str, device_id: str
) -> Any:
    runner = load_runner(repository / "classifier" / "1", monkeypatch)
    model = runner.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_instance_kind": kind,
            "model_instance_device_id": device_id,
            "model_repository": str(repository / "classifier"),
            "model_version": "1",
        }
    )
    return model


@pytest.mark.parametrize(("kind", "device_id", "expected"), [("GPU", "1", "cuda:1"), ("CPU", "0", "cpu")])
def test_the_runner_loads_the_model_where_its_instance_group_puts_it(
    gpu_python_repository: Path, monkeypatch: pytest.MonkeyPatch, kind: str, device_id: str, expected: str
) -> None:
    placed: list[torch.device] = []
    real_load = torch.jit.load

    def record(path: str, map_location: torch.device) -> Any:
        placed.append(map_location)
        return real_load(path, map_location="cpu")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(torch.jit, "load", record)
    config = runner_config()
    model = initialize_runner(gpu_python_repository, monkeypatch, config, kind, device_id)
    assert placed == [torch.device(expected)]
    assert model.device == torch.device(expected)


@pytest.fixture
def jit_switches_restored() -> Iterator[None]:
    """The switches are process-wide: put TorchScript's back as it was for the tests after."""
    executor = torch._C._jit_set_profiling_executor(True)
    torch._C._jit_set_profiling_executor(executor)
    profiling = torch._C._jit_set_profiling_mode(True)
    torch._C._jit_set_profiling_mode(profiling)
    fuser, optimize = torch._C._jit_texpr_fuser_enabled(), torch._C._get_graph_executor_optimize()
    yield
    torch._C._jit_set_profiling_executor(executor)
    torch._C._jit_set_profiling_mode(profiling)
    torch._C._jit_set_texpr_fuser_enabled(fuser)
    torch._C._set_graph_executor_optimize(optimize)


@pytest.mark.usefixtures("jit_switches_restored")
def test_the_runner_honours_the_libtorch_backends_jit_parameters(
    gpu_python_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator tunes TorchScript with the same config parameters on either GPU runner."""
    config = runner_config(
        ENABLE_JIT_EXECUTOR="false",
        ENABLE_JIT_PROFILING="False",
        ENABLE_TENSOR_FUSER="false",
        DISABLE_OPTIMIZED_EXECUTION="true",
    )
    initialize_runner(gpu_python_repository, monkeypatch, config, "CPU", "0")
    assert torch._C._jit_set_profiling_executor(True) is False
    assert torch._C._jit_set_profiling_mode(True) is False
    assert torch._C._jit_texpr_fuser_enabled() is False
    assert torch._C._get_graph_executor_optimize() is False


@pytest.mark.usefixtures("jit_switches_restored")
def test_a_jit_parameter_that_is_not_a_boolean_fails_the_load_by_name(
    gpu_python_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = runner_config(ENABLE_TENSOR_FUSER="off")
    fuser = torch._C._jit_texpr_fuser_enabled()
    with pytest.raises(ValueError, match="ENABLE_TENSOR_FUSER must be true or false, got 'off'"):
        initialize_runner(gpu_python_repository, monkeypatch, config, "CPU", "0")
    assert torch._C._jit_texpr_fuser_enabled() is fuser


def test_serve_refuses_a_libtorch_repository_without_a_libtorch_backend_with_the_ways_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import emotion_build.cli

    monkeypatch.setattr(emotion_build.cli, "default_backends_dir", lambda: tmp_path / "no-backends")
    for name, config in all_configs(ModelDescription(labels=LABELS), "gpu").items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(render(config))
    assert cli_main(["serve", "--model-repository", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "needs Triton's libtorch backend" in error
    for way_out in ("docker/", "make libtorch-backend", "--classifier-on-cpu", "--target cpu"):
        assert way_out in error, way_out
