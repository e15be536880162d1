"""Triton Python-backend model `classifier` for servers without the libtorch backend.

It runs the classifier on one of two engines (the config's `engine` parameter). TorchScript: the
very model.pt that `platform: "pytorch_libtorch"` serves on GPU, fed the same ragged batch that
backend would build. OpenVINO (cpu target): the same classifier converted to OpenVINO IR, fed
padded batches of similar lengths and their lengths (openvino_engine.py). It runs where its
instance group puts it: KIND_CPU on the CPU (the cpu target), KIND_GPU on that instance's GPU (the
gpu-python target, TorchScript only). Each clip is checked on its own first (the classifier can be
called without the ensemble): a bad clip gets its own INVALID_ARG response, its pages in the
stub's shared memory go back to the kernel (shm_pages.py), and the rest of the batch runs without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub
from cpu_features import (  # copied beside this file
    check_int8_products,
    cpu_flags,
    emulation_warning,
    refuse_int8_off_cpu,
)
from heap import keep_freed_memory, malloc_set_by_environment  # copied beside this file
from ragged import concatenate, length_groups, merge_groups, split_rows, unanswered_rows  # copied beside this file
from shm_pages import release_pages  # copied beside this file
from waveform import WaveformError, WaveformLimits, validate  # copied beside this file

PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "int8+bfloat16": "int8"}
"""The export's precision by the config's weights_dtype, as the OpenVINO engine takes it."""

JIT_SWITCHES: dict[str, Callable[[bool], object]] = {
    "ENABLE_JIT_EXECUTOR": torch._C._jit_set_profiling_executor,
    "ENABLE_JIT_PROFILING": torch._C._jit_set_profiling_mode,
    "ENABLE_TENSOR_FUSER": torch._C._jit_set_texpr_fuser_enabled,
    "DISABLE_OPTIMIZED_EXECUTION": lambda disable: torch._C._set_graph_executor_optimize(not disable),
}
"""The libtorch backend's parameters of these names, so one config means the same on both runners."""


def apply_jit_parameters(parameters: dict[str, str]) -> None:
    """Process-wide TorchScript switches; each stub is its own process, so they stay this model's.

    A value other than true/false fails the load, as it does in the libtorch backend, rather than
    quietly meaning false; every value is checked before any switch is set."""
    flags = {}
    for key in JIT_SWITCHES.keys() & parameters.keys():
        value = parameters[key].strip().lower()
        if value not in ("true", "false"):
            raise ValueError(f"config parameter {key} must be true or false, got {parameters[key]!r}")
        flags[key] = value == "true"
    for key, flag in flags.items():
        JIT_SWITCHES[key](flag)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        keep_mb = int(parameters.get("keep_freed_memory_mb", "0"))
        chosen = malloc_set_by_environment()
        if keep_mb > 0 and chosen:
            pb_utils.Logger.log_info(f"keep_freed_memory_mb={keep_mb} not applied: {', '.join(chosen)} set malloc up")
        elif keep_mb > 0 and not keep_freed_memory(keep_mb * 2**20):
            pb_utils.Logger.log_warn(
                f"keep_freed_memory_mb={keep_mb}: this C library has no glibc mallopt or refused it; "
                "each batch will fault its memory in afresh"
            )
        threads = int(parameters.get("intra_op_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.limits = WaveformLimits(
            sample_rate=int(parameters["sample_rate"]),
            min_samples=int(parameters["min_samples"]),
            max_samples=int(parameters["max_samples"]),
            max_abs_amplitude=float(parameters["max_abs_amplitude"]) if "max_abs_amplitude" in parameters else None,
        )
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]
        self.max_padding = float(parameters.get("max_padding_fraction", "inf"))
        self.device = torch.device(parameters.get("device") or self._instance_device(args))
        apply_jit_parameters(parameters)
        weights_dtype = parameters.get("weights_dtype", "float32")
        refuse_int8_off_cpu(weights_dtype, self.device.type)
        version = os.path.join(args["model_repository"], args["model_version"])
        self.openvino: Any = None
        self.model: Any = None
        if parameters.get("engine", "torchscript") == "openvino":
            if self.device.type != "cpu":
                raise ValueError(f"the OpenVINO engine runs on the CPU; this instance is on {self.device}")
            from openvino_engine import IR_FILE, OpenVinoEngine  # copied beside this file; imports openvino

            precision = PRECISIONS.get(weights_dtype, "fp32")
            self.openvino = OpenVinoEngine(os.path.join(version, IR_FILE), threads=threads, precision=precision)
        else:
            path = os.path.join(version, "model.pt")
            self.model = torch.jit.load(path, map_location=self.device).eval()  # type: ignore[no-untyped-call]
        self._warn_if_emulated(weights_dtype)

    def _warn_if_emulated(self, weights_dtype: str) -> None:
        """Reduced precision this CPU does not compute natively still answers as the export gated it,
        several times slower: bf16 emulated, or int8 products that the layers' own check on this CPU
        (before any request) sent to float32 because torch._int_mm saturates here. Said at load, in
        the log and as a metric an operator can alert on (the export chose the precision on a
        machine that had the instructions; this one may not)."""
        exact = check_int8_products(self.model) if self.device.type == "cpu" and self.model is not None else None
        warning = emulation_warning(weights_dtype, cpu_flags(), int8_exact=exact) if self.device.type == "cpu" else None
        family = pb_utils.MetricFamily(
            name="emotion_classifier_precision_emulated",
            description="1 when the classifier's reduced precision does not run on this CPU's own instructions "
            "(bf16 emulated, or int8 products computed in float32 where int8 kernels saturate): answers as "
            "exported, several times slower; re-export on this machine or with --dtype fp32",
            kind=pb_utils.MetricFamily.GAUGE,
        )
        self._metric_family = family  # both live as long as the model; finalize() drops the metric first
        self._emulated_metric = family.Metric(labels={"model": "classifier", "weights_dtype": weights_dtype})
        self._emulated_metric.set(0.0 if warning is None else 1.0)
        if warning is not None:
            pb_utils.Logger.log_warn(f"SLOW: {warning}")

    @staticmethod
    def _instance_device(args: dict[str, str]) -> str:
        on_gpu = args.get("model_instance_kind") == "GPU"
        return f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu"

    def _forward(self, clips: list[Any]) -> list[Any]:
        """The model on clips of similar length at a time, outputs back in the batch's order."""
        groups = length_groups([clip.size for clip in clips], max_padding=self.max_padding)
        if self.openvino is not None:
            ran = [self.openvino.run([clips[i] for i in group]) for group in groups]
            return [torch.from_numpy(rows) for rows in merge_groups(groups, ran)]
        outputs = []
        with torch.inference_mode():
            for group in groups:
                flat, ends = concatenate([clips[i] for i in group])
                results = self.model(torch.from_numpy(flat).to(self.device), torch.from_numpy(ends).to(self.device))
                outputs.append([result.cpu().numpy() for result in results])
        return [torch.from_numpy(rows) for rows in merge_groups(groups, outputs)]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        clips, runnable = [], []
        for index, request in enumerate(requests):
            waveform = pb_utils.get_input_tensor_by_name(request, self.input_name)
            try:
                clip = validate(waveform.as_numpy(), self.limits)
            except WaveformError as error:
                release_pages(waveform)
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                )
                continue
            clips.append(clip)
            runnable.append(index)
        if clips:
            for index, response in zip(runnable, self._run(clips), strict=True):
                responses[index] = response
        return responses

    def finalize(self) -> None:
        """A metric must go before its family, or the stub reports an invalid metric operation."""
        self.__dict__.pop("_emulated_metric", None)
        self.__dict__.pop("_metric_family", None)

    def _run(self, clips: list[Any]) -> list[Any]:
        try:
            outputs = self._forward(clips)
        except RuntimeError as error:  # TorchScript's and OpenVINO's failures alike
            message = f"classifier failed on a batch of {len(clips)}: {error}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message)) for _ in clips]
        arrays = [np.ascontiguousarray(output.numpy()) for output in outputs]
        rows = [split_rows(array, len(clips)) for array in arrays]
        responses = [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, per_output[i])
                    for name, per_output in zip(self.output_names, rows, strict=True)
                ]
            )
            for i in range(len(clips))
        ]
        for i in unanswered_rows(arrays):  # every clip was validated: the model computed no finite answer
            peak = float(np.abs(clips[i]).max())
            message = (
                "the classifier has no answer for this clip: the model computed NaN or infinity for it (peak "
                f"|sample| {peak:.4g}; a clip sent straight to the classifier must be normalised as the ensemble does)"
            )
            responses[i] = pb_utils.InferenceResponse(
                error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
            )
        return responses
