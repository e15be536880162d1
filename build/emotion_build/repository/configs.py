"""Render the four Triton model configs of one checkpoint from the one `ModelDescription`.

Configs are built as Triton's own `ModelConfig` protobuf and printed with `text_format`, so a
misspelt field fails here, at build time, instead of when the server loads the repository.
"""

from __future__ import annotations

import json

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .description import (
    AUDIO_INPUT,
    CHUNK_INPUT,
    CLASSIFIER_OUTPUTS,
    EMBEDDING_OUTPUT,
    LABELS_FILE,
    PROBABILITIES_OUTPUT,
    STREAM_DONE,
    STREAM_OUTPUTS,
    TARGETS,
    WAVEFORM,
    WAVEFORM_ENDS,
    WAVEFORM_ITEMS,
    ModelDescription,
    Target,
    ensemble_parameters,
)

__all__ = ["all_configs", "classifier_config", "ensemble_config", "preprocess_config", "render", "stream_config"]

_ENSEMBLE_WAVEFORM = "normalised_waveform"


def _parameters(config: mc.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def _class_outputs(config: mc.ModelConfig, description: ModelDescription, *, with_labels: bool) -> None:
    for name in CLASSIFIER_OUTPUTS:
        width = description.embedding_size if name == EMBEDDING_OUTPUT else len(description.labels)
        output = config.output.add(name=name, data_type=mc.TYPE_FP32, dims=[width])
        if with_labels and name != EMBEDDING_OUTPUT:
            # Triton's classification extension labels each answer from the model that computed it:
            # the SDK asks it of the logits and keeps the probabilities exact.
            output.label_filename = LABELS_FILE


def _queue_policy(config: mc.ModelConfig, description: ModelDescription) -> None:
    """Bounded queues with REJECT: overload answers fast with UNAVAILABLE instead of growing latency."""
    policy = config.dynamic_batching.default_queue_policy
    policy.max_queue_size = description.batching.max_queue_size
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = description.batching.queue_timeout_ms * 1000
    policy.allow_timeout_override = True


def _warmup(config: mc.ModelConfig, description: ModelDescription, input_name: str) -> None:
    """A zero clip of one second is valid input for both models (silence normalises to zeros)."""
    if description.batching.warmup_count < 1:
        return
    warmup = config.model_warmup.add(name="one_second_clip", batch_size=1, count=description.batching.warmup_count)
    warmup.inputs[input_name].data_type = mc.TYPE_FP32
    warmup.inputs[input_name].dims.append(description.sample_rate)
    warmup.inputs[input_name].zero_data = True


def preprocess_config(description: ModelDescription) -> mc.ModelConfig:
    batching = description.batching
    config = mc.ModelConfig(name=description.names.preprocess, backend="python", max_batch_size=batching.max_batch_size)
    config.input.add(name=AUDIO_INPUT, data_type=mc.TYPE_FP32, dims=[-1], allow_ragged_batch=True)
    config.output.add(name=WAVEFORM, data_type=mc.TYPE_FP32, dims=[-1])
    config.dynamic_batching.max_queue_delay_microseconds = 0
    _queue_policy(config, description)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=batching.preprocess_instances)
    _parameters(
        config,
        {
            "sample_rate": str(description.sample_rate),
            "do_normalize": "true" if description.do_normalize else "false",
            "min_samples": str(description.min_samples),
            "max_samples": str(description.max_samples),
            "max_abs_amplitude": repr(description.max_abs_amplitude),
        },
    )
    return config


def classifier_config(description: ModelDescription, target: Target) -> mc.ModelConfig:
    """The same tensors and batching on every target; the runtime and the device differ, and the libtorch
    classifier also takes each batch item's length."""
    batching = description.batching
    config = mc.ModelConfig(name=description.names.classifier, max_batch_size=batching.max_batch_size)
    config.input.add(name=WAVEFORM, data_type=mc.TYPE_FP32, dims=[-1], allow_ragged_batch=True)
    config.batch_input.add(
        kind=mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT,
        target_name=[WAVEFORM_ENDS],
        data_type=mc.TYPE_INT32,
        source_input=[WAVEFORM],
    )
    _class_outputs(config, description, with_labels=False)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    if batching.cut is not None:
        config.dynamic_batching.preferred_batch_size.append(batching.cut)
    _queue_policy(config, description)
    _warmup(config, description, WAVEFORM)
    on_gpu = target != "cpu" and not batching.classifier_on_cpu
    kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    if target == "gpu":
        if description.engine != "torchscript":
            raise ValueError(f"the {description.engine} engine is for the cpu target")
        config.platform = "pytorch_libtorch"
        # Each batch item's length: the libtorch backend answers a request of n clips with n rows, which the
        # accumulated count alone cannot tell apart from one clip (served_classifier.py).
        config.batch_input.add(
            kind=mc.BatchInput.BATCH_ITEM_SHAPE,
            target_name=[WAVEFORM_ITEMS],
            data_type=mc.TYPE_INT32,
            source_input=[WAVEFORM],
        )
        config.instance_group.add(kind=kind, count=batching.classifier_instances)
        _parameters(config, {"INFERENCE_MODE": "true"})
    elif target in ("cpu", "gpu-python"):
        if description.engine != "torchscript" and target != "cpu":
            raise ValueError(f"the {description.engine} engine is for the cpu target")
        config.backend = "python"
        config.instance_group.add(kind=kind, count=batching.classifier_instances)
        # The runner checks each clip on its own too: the classifier is reachable without the ensemble,
        # and one clip too short for the conv stack would otherwise fail everyone in its batch. The
        # preprocess's amplitude limit holds for its output as well (a normalised clip of n samples
        # peaks below sqrt(n), 693 at 30 s), and whether a clip far past it overflows inside the model
        # would otherwise depend on the precision (int8's per-frame scales compute 3e38 samples).
        _parameters(
            config,
            {
                "intra_op_threads": str(batching.intra_op_threads),
                "sample_rate": str(description.sample_rate),
                "min_samples": str(description.min_samples),
                "max_samples": str(description.max_samples),
                "max_abs_amplitude": repr(description.max_abs_amplitude),
                "weights_dtype": description.weights_dtype,
                "engine": description.engine,
            },
        )
        _parameters(
            config,
            {
                "max_padding_fraction": repr(batching.max_padding_fraction),
                "keep_freed_memory_mb": str(batching.keep_freed_memory_mb),
            },
        )
    else:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return config


def ensemble_config(description: ModelDescription) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=description.names.ensemble, platform="ensemble", max_batch_size=description.batching.max_batch_size
    )
    config.input.add(name=AUDIO_INPUT, data_type=mc.TYPE_FP32, dims=[-1])
    _class_outputs(config, description, with_labels=True)
    preprocess = config.ensemble_scheduling.step.add(model_name=description.names.preprocess, model_version=-1)
    preprocess.input_map[AUDIO_INPUT] = AUDIO_INPUT
    preprocess.output_map[WAVEFORM] = _ENSEMBLE_WAVEFORM
    classifier = config.ensemble_scheduling.step.add(model_name=description.names.classifier, model_version=-1)
    classifier.input_map[WAVEFORM] = _ENSEMBLE_WAVEFORM
    for name in CLASSIFIER_OUTPUTS:
        classifier.output_map[name] = name
    _parameters(config, ensemble_parameters(description))
    return config


STREAM_CANDIDATE_MARGIN = 2
"""The sequence batcher holds this many times max_streams: a stream past the limit must reach the model to be
refused (beyond the batcher's candidates Triton would hold it back, silently), and a refused stream's
place stays taken until its idle timeout."""


def stream_config(description: ModelDescription) -> mc.ModelConfig:
    """Decoupled, under the sequence batcher's oldest strategy: every live stream is a candidate sequence,
    its chunks in order, several streams' chunks in one execution."""
    stream = description.stream
    config = mc.ModelConfig(
        name=description.names.stream, backend="python", max_batch_size=description.batching.max_batch_size
    )
    config.input.add(name=CHUNK_INPUT, data_type=mc.TYPE_FP32, dims=[-1])
    for name in STREAM_OUTPUTS:
        config.output.add(name=name, data_type=mc.TYPE_FP64, dims=[1])
    config.output.add(name=PROBABILITIES_OUTPUT, data_type=mc.TYPE_FP32, dims=[len(description.labels)])
    config.output.add(name=STREAM_DONE, data_type=mc.TYPE_BOOL, dims=[1])
    config.model_transaction_policy.decoupled = True
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = round(stream.idle_timeout_s * 1e6)
    batching.oldest.max_candidate_sequences = STREAM_CANDIDATE_MARGIN * stream.max_streams
    batching.oldest.max_queue_delay_microseconds = 0
    for name, kind in (
        ("START", mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START),
        ("END", mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END),
    ):
        control = batching.control_input.add(name=name).control.add(kind=kind)
        control.int32_false_true.extend([0, 1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    _parameters(
        config,
        {
            "sample_rate": str(description.sample_rate),
            "min_samples": str(description.min_samples),
            "max_samples": str(description.max_samples),
            "max_abs_amplitude": repr(description.max_abs_amplitude),
            "ensemble": description.names.ensemble,
            "audio_input": AUDIO_INPUT,
            "probabilities_output": PROBABILITIES_OUTPUT,
            "max_streams": str(stream.max_streams),
            "idle_timeout_s": repr(stream.idle_timeout_s),
            "labels": json.dumps(list(description.labels)),
        },
    )
    return config


def all_configs(
    description: ModelDescription, target: Target, *, pinned: int | None = None
) -> dict[str, mc.ModelConfig]:
    """The checkpoint's four configs by model name. Unpinned, Triton serves each model's newest version
    (its default policy); `pinned` serves that version alone: how a roll goes back (docs/serving.md)."""
    names = description.names
    configs = {
        names.preprocess: preprocess_config(description),
        names.classifier: classifier_config(description, target),
        names.ensemble: ensemble_config(description),
        names.stream: stream_config(description),
    }
    if pinned is not None:
        for config in configs.values():
            config.version_policy.specific.versions.append(pinned)
    return configs


def render(config: mc.ModelConfig) -> str:
    text: str = text_format.MessageToString(config)
    return text
