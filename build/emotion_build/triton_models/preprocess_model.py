"""Triton Python-backend model `preprocess`: validate one clip per request and normalise it.

A refused clip's pages in the stub's shared-memory region go back to the kernel at once
(shm_pages.py), and malloc returns any buffer larger than the longest valid clip when it is freed
(heap.py): what an oversized request cost this stub is given back, not kept.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub
from heap import keep_freed_memory, malloc_set_by_environment  # copied beside this file
from shm_pages import release_pages  # copied beside this file
from waveform import WaveformError, WaveformLimits, normalise, validate  # copied beside this file


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.limits = WaveformLimits(
            sample_rate=int(parameters["sample_rate"]),
            min_samples=int(parameters["min_samples"]),
            max_samples=int(parameters["max_samples"]),
            max_abs_amplitude=float(parameters["max_abs_amplitude"]),
        )
        self.do_normalize = parameters["do_normalize"] == "true"
        if not malloc_set_by_environment():
            keep_freed_memory(self.limits.max_samples * np.dtype(np.float32).itemsize)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            audio = pb_utils.get_input_tensor_by_name(request, self.input_name)
            try:
                if audio is None:
                    raise WaveformError(f"missing input tensor {self.input_name!r}")
                clip = validate(audio.as_numpy(), self.limits)
            except WaveformError as error:
                if audio is not None:
                    release_pages(audio)
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
                )
                continue
            normalised = normalise(clip, do_normalize=self.do_normalize)[None, :]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, normalised)]))
        return responses
