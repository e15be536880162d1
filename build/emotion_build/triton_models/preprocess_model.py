"""Triton Python-backend model `preprocess`: validate one clip per request and normalise it."""

from __future__ import annotations

import json
from typing import Any

import triton_python_backend_utils as pb_utils  # provided by Triton's Python-backend stub
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
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))
                )
                continue
            normalised = normalise(clip, do_normalize=self.do_normalize)[None, :]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, normalised)]))
        return responses
