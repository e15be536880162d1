"""Generated configs are valid Triton ModelConfig messages and say what the description says."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from emotion_build.repository.configs import all_configs, render
from emotion_build.repository.description import TARGETS, BatchingSettings, ModelDescription, Provenance

LABELS = ("neu", "hap", "ang", "sad")


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_configs_round_trip_through_triton_protobuf(target: str) -> None:
    description = ModelDescription(labels=LABELS, batching=BatchingSettings(max_batch_size=16, max_queue_delay_us=700))
    for name, config in all_configs(description, target).items():  # type: ignore[arg-type]
        parsed = parse(render(config))
        assert parsed == config
        assert parsed.name == name
        assert parsed.max_batch_size == 16


def test_gpu_classifier_is_libtorch_with_ragged_batching_on_gpu() -> None:
    config = all_configs(ModelDescription(labels=LABELS), "gpu")["classifier"]
    assert config.platform == "pytorch_libtorch"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert config.input[0].allow_ragged_batch
    ends, items = config.batch_input
    assert ends.kind == mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT
    # One row per batch item, not per request: a request of [2, n] is two clips (served_classifier.py).
    assert (items.kind, list(items.target_name)) == (mc.BatchInput.BATCH_ITEM_SHAPE, ["waveform_items"])
    for batch_input in (ends, items):
        assert batch_input.data_type == mc.TYPE_INT32  # core rejects INT64 batch inputs
        assert list(batch_input.source_input) == [config.input[0].name]
    # libtorch maps outputs by config order: logits first, as forward() returns them.
    assert [o.name for o in config.output] == ["logits", "probabilities", "embedding"]
    assert list(config.output[2].dims) == [ModelDescription(labels=LABELS).embedding_size]
    assert config.dynamic_batching.max_queue_delay_microseconds == BatchingSettings().max_queue_delay_us


def test_cpu_and_gpu_classifiers_differ_only_in_runtime_device_and_item_lengths() -> None:
    configs = {t: all_configs(ModelDescription(labels=LABELS), t)["classifier"] for t in ("gpu", "cpu")}
    del configs["gpu"].batch_input[1]  # the per-item lengths only libtorch needs
    for config in configs.values():
        config.ClearField("platform")
        config.ClearField("backend")
        config.ClearField("parameters")
        for group in config.instance_group:
            group.ClearField("kind")
    assert configs["gpu"] == configs["cpu"]


@pytest.mark.parametrize("target", ["gpu", "gpu-python"])
def test_a_gpu_target_can_put_its_classifier_on_the_cpu_and_nothing_else_changes(target: str) -> None:
    on_gpu = BatchingSettings.for_target(target)  # type: ignore[arg-type]
    on_cpu = dataclasses.replace(on_gpu, classifier_on_cpu=True)
    configs = [all_configs(ModelDescription(labels=LABELS, batching=b), target)["classifier"] for b in (on_gpu, on_cpu)]  # type: ignore[arg-type]
    assert [[g.kind for g in c.instance_group] for c in configs] == [
        [mc.ModelInstanceGroup.KIND_GPU],
        [mc.ModelInstanceGroup.KIND_CPU],
    ]
    configs[1].instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
    assert configs[0] == configs[1]


def test_ensemble_carries_labels_and_sdk_parameters() -> None:
    description = ModelDescription(labels=("calm", "angry"), untrained=True, max_duration_s=12.5)
    config = all_configs(description, "cpu")["emotion"]
    assert config.platform == "ensemble"
    probabilities = next(o for o in config.output if o.name == "probabilities")
    assert probabilities.label_filename == "labels.txt"
    assert list(probabilities.dims) == [2]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["labels"] == '["calm", "angry"]'
    assert params["untrained"] == "true"
    assert float(params["max_duration_s"]) == 12.5
    assert [step.model_name for step in config.ensemble_scheduling.step] == ["preprocess", "classifier"]


def test_exported_repository_configs_parse_and_labels_match(tiny_repository: Path) -> None:
    configs = {p.parent.name: parse(p.read_text()) for p in tiny_repository.glob("*/config.pbtxt")}
    assert set(configs) == {"emotion", "preprocess", "classifier", "stream"}
    assert configs["classifier"].backend == "python"
    assert configs["stream"].model_transaction_policy.decoupled
    labels = (tiny_repository / "emotion" / "labels.txt").read_text().splitlines()
    assert labels == list(LABELS)
    assert (tiny_repository / "classifier" / "1" / "model.pt").stat().st_size > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ()}, "no labels"),
        ({"labels": ("a", "a")}, "unique"),
        ({"labels": LABELS, "min_duration_s": 5.0, "max_duration_s": 1.0}, "min_duration_s"),
        ({"labels": LABELS, "batching": BatchingSettings(max_batch_size=0)}, "max_batch_size"),
    ],
)
def test_description_rejects_inconsistent_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelDescription(**kwargs)  # type: ignore[arg-type]


def test_labels_follow_class_index_not_insertion_order() -> None:
    assert ModelDescription.labels_from_id2label({"1": "hap", "0": "neu"}) == ("neu", "hap")
    with pytest.raises(ValueError, match="indices"):
        ModelDescription.labels_from_id2label({0: "neu", 2: "ang"})


@pytest.mark.parametrize("target", TARGETS)
def test_queues_are_bounded_and_reject_and_the_classifier_warms_up(target: str) -> None:
    description = ModelDescription(labels=LABELS, batching=BatchingSettings(max_queue_size=64, queue_timeout_ms=1500))
    configs = all_configs(description, target)  # type: ignore[arg-type]
    for name in ("preprocess", "classifier"):
        policy = configs[name].dynamic_batching.default_queue_policy
        assert policy.max_queue_size == 64
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
        assert policy.default_timeout_microseconds == 1_500_000
    (warmup,) = configs["classifier"].model_warmup
    assert warmup.count == BatchingSettings().warmup_count
    assert list(warmup.inputs["waveform"].dims) == [16000]
    assert warmup.inputs["waveform"].zero_data


def test_cpu_batches_are_cut_at_the_preferred_size_and_gpu_batches_are_not() -> None:
    cpu = all_configs(ModelDescription(labels=LABELS, batching=BatchingSettings.for_target("cpu")), "cpu")
    assert list(cpu["classifier"].dynamic_batching.preferred_batch_size) == [4]
    # The cut splits what waits; max_batch_size still bounds what a queue delay may gather.
    assert cpu["classifier"].max_batch_size == cpu["emotion"].max_batch_size == 8
    assert not cpu["preprocess"].dynamic_batching.preferred_batch_size
    gpu = all_configs(ModelDescription(labels=LABELS, batching=BatchingSettings.for_target("gpu")), "gpu")
    assert not gpu["classifier"].dynamic_batching.preferred_batch_size
    with pytest.raises(ValueError, match="preferred_batch_size"):
        BatchingSettings(preferred_batch_size=-1)
    for at_or_above_max in (8, 9):  # Triton rejects a preferred size above the max; at it, it is the max
        settings = BatchingSettings(max_batch_size=8, preferred_batch_size=at_or_above_max)
        config = all_configs(ModelDescription(labels=LABELS, batching=settings), "cpu")["classifier"]
        assert not config.dynamic_batching.preferred_batch_size


def test_queue_must_hold_a_batch() -> None:
    with pytest.raises(ValueError, match="max_queue_size"):
        ModelDescription(labels=LABELS, batching=BatchingSettings(max_batch_size=32, max_queue_size=8))


def test_export_refuses_a_bad_batching_flag_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from emotion_build.cli import main

    # A model id that cannot load: reaching the loader would fail with a different message.
    argv = ["export", "--model", str(tmp_path / "absent"), "--output", str(tmp_path / "repo")]
    assert main([*argv, "--target", "cpu", "--preferred-batch-size", "-1"]) == 2
    assert "preferred_batch_size must be >= 0" in capsys.readouterr().err
    assert main([*argv, "--target", "cpu", "--classifier-on-cpu"]) == 2
    assert "--classifier-on-cpu is for the gpu and gpu-python targets" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_the_bench_rewrites_batching_and_keeps_what_the_export_recorded(auto_repository: Path, tmp_path: Path) -> None:
    """benchmarks' rewrite_configs renders from export.json's description: precision and limits stay."""
    import shutil

    from speed.served import rewrite_configs

    copy = tmp_path / "repository"
    shutil.copytree(auto_repository, copy)
    before = {name: (copy / name / "config.pbtxt").read_text() for name in ("emotion", "classifier", "preprocess")}
    rewrite_configs(copy, BatchingSettings(max_batch_size=16, classifier_instances=3))
    after = {name: (copy / name / "config.pbtxt").read_text() for name in before}
    assert "max_batch_size: 16" in after["classifier"] and "count: 3" in after["classifier"]
    for name in before:
        for line in before[name].splitlines():
            if "weights_dtype" in line or "duration_s" in line or "max_samples" in line or "labels" in line:
                assert line in after[name], (name, line)
    provenance = Provenance.from_json((copy / "classifier" / "1" / "export.json").read_text())
    assert f'string_value: "{provenance.dtype}"' in after["classifier"]
