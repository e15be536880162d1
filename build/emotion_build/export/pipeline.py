"""The export: a Hugging Face classifier converted for its engine (TorchScript, or OpenVINO for the cpu
target), checked against eager fp32 (parity in fp32, the speech gate in a reduced precision), written as
a Triton repository; `auto` walks its fallbacks (int8, bf16, fp32; OpenVINO, TorchScript)."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers

from ..model.families import family_of
from ..model.geometry import receptive_field
from ..model.loading import LoadedModel
from ..model.served_classifier import strip_source_paths
from ..repository.description import (
    ENSEMBLE_MODEL,
    MAX_ABS_AMPLITUDE,
    MODEL_FILE,
    BatchingSettings,
    ModelDescription,
    Provenance,
    StreamSettings,
    Target,
)
from ..repository.layout import VersionRequest, destination_version
from ..repository.writer import write_repository
from ..triton_models.cpu_features import cpu_flags
from ..triton_models.openvino_engine import IR_FILE
from ..triton_models.waveform import FloatArray, normalise
from . import openvino_ir
from .calibration import (
    MIN_CALIBRATION_S,
    GateSpeech,
    espeak_calibration_speech,
    espeak_gate_speech,
    gate,
    split_calibration,
)
from .openvino_ir import OpenVinoUnavailableError, openvino_available
from .parity import PARITY_TOLERANCE, CheckedModule, ParityReport, check_parity
from .precision import (
    FALLBACKS,
    MIN_TOP1_TESTED,
    PROVENANCE_NAMES,
    EngineRequest,
    PrecisionChoice,
    PrecisionRequest,
    choose_precision,
)
from .speech import SpeechUnavailableError
from .tracing import conv_form_for, trace

__all__ = ["ExportError", "ExportResult", "describe", "export"]

ENGINE_NAMES = {"torchscript": "TorchScript", "openvino": "OpenVINO"}
IR_WEIGHTS_FILE = "model.bin"

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The export did not produce an artifact that can be trusted; the message says by how much."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExportResult:
    repository: Path
    description: ModelDescription
    provenance: Provenance
    parity: ParityReport
    version: int = 1


def describe(
    loaded: LoadedModel,
    *,
    batching: BatchingSettings,
    min_duration_s: float,
    max_duration_s: float,
    max_abs_amplitude: float = MAX_ABS_AMPLITUDE,
    stream: StreamSettings | None = None,
    name: str = ENSEMBLE_MODEL,
) -> ModelDescription:
    """Everything the served models need to know, read from the HF model and feature extractor."""
    extractor = loaded.feature_extractor
    config = loaded.model.config
    return ModelDescription(
        labels=ModelDescription.labels_from_id2label(loaded.model.config.id2label or {}),
        sample_rate=int(extractor.sampling_rate),
        do_normalize=bool(extractor.do_normalize),
        min_duration_s=min_duration_s,
        max_duration_s=max_duration_s,
        max_abs_amplitude=max_abs_amplitude,
        receptive_field_samples=receptive_field(config.conv_kernel, config.conv_stride),
        batching=batching,
        untrained=loaded.untrained,
        embedding_size=int(loaded.model.config.classifier_proj_size),
        stream=stream or StreamSettings(),
        name=name,
        family=family_of(loaded.model).name,
    )


def export(
    loaded: LoadedModel,
    output: Path,
    target: Target,
    description: ModelDescription,
    *,
    check_lengths: Sequence[int] | None = None,
    progress: Progress | None = None,
    dtype: PrecisionRequest = "auto",
    gate_speech: GateSpeech | None = None,
    machine_flags: frozenset[str] | None = None,
    engine: EngineRequest = "auto",
    version: VersionRequest = None,
) -> ExportResult:
    """Convert, check and write the repository on the engine and in the precision asked for.

    The cpu target runs OpenVINO where it is installed (`engine` auto), else TorchScript; the GPU
    targets TorchScript. `auto` precision takes int8, then bf16, where this CPU computes them
    natively (`machine_flags`: /proc/cpuinfo's by default), else fp32. A reduced precision is traced
    on CUDA when a GPU target has one, and must pass the speech gate (`gate_speech`, or espeak-ng
    clips) against the eager fp32 model; an explicit request fails when it does not, `auto` falls
    back (int8, bf16, fp32) and says why (as it does when there is no speech to gate on), and an
    automatic OpenVINO that cannot convert or check the model gives way to TorchScript.

    The checkpoint goes into `output` under `description.name` beside any other models there: anew
    (replacing that name), or as a new `version`. A clash fails here, before any work."""
    destination_version(output.resolve(), description.names, version)
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    flags = cpu_flags() if machine_flags is None else machine_flags
    choice = choose_precision(dtype, target, flags, engine=engine, openvino=openvino_available())
    say(f"engine: {choice.engine}; precision: {choice.precision} ({choice.reason})")
    if check_lengths is None:
        rng = np.random.default_rng(7)
        upper = min(description.max_samples, 8 * description.sample_rate)
        check_lengths = sorted(
            {
                description.min_samples,
                description.sample_rate,
                *rng.integers(description.min_samples, upper, 3).tolist(),
            }
        )
    with tempfile.TemporaryDirectory(prefix="emotion-export-") as scratch:
        # Synthesised once, however many precisions `auto` tries on it.
        speech = functools.cache(lambda: gate_speech or espeak_gate_speech(description, say))
        outcome: Artifact | PrecisionChoice = choice
        while isinstance(outcome, PrecisionChoice):  # auto falls back: int8 -> bf16 -> fp32, OpenVINO -> TorchScript
            choice = outcome
            directory = Path(tempfile.mkdtemp(prefix=f"{choice.engine}-{choice.precision}-", dir=scratch))
            try:
                if choice.precision == "fp32":
                    outcome = _fp32_artifact(loaded, description, target, choice, check_lengths, directory, say)
                else:
                    outcome = _reduced_artifact(
                        loaded, description, target, choice, speech, directory, say, own_speech=gate_speech is not None
                    )
            except OpenVinoUnavailableError as error:
                if not choice.engine_automatic:
                    raise ExportError(f"--engine openvino: {error}") from error
                outcome = choice.on_torchscript(str(error))
                say(f"warning: {error}; exporting with TorchScript instead")
        provenance, parity, files = outcome
        description = dataclasses.replace(description, weights_dtype=provenance.dtype, engine=provenance.engine)
        provenance = dataclasses.replace(provenance, description=description.record())
        number = write_repository(output, description, target, artifacts=files, provenance=provenance, version=version)
        say(f"wrote model '{description.name}' version {number} ({target}) to {output}")
    return ExportResult(output, description, provenance, parity, number)


Artifact = tuple[Provenance, ParityReport, dict[str, Path]]
"""What one attempt made: its record, its check, and the classifier's files by their name in the repository."""


def _built(
    loaded: LoadedModel,
    description: ModelDescription,
    target: Target,
    choice: PrecisionChoice,
    directory: Path,
    say: Progress,
    *,
    calibration: Sequence[FloatArray] = (),
    device: str = "cpu",
) -> tuple[CheckedModule, dict[str, Path]]:
    """The classifier in `choice`'s engine and precision, saved in `directory` and loaded back as it
    will be served: the module the checks run, and the files."""
    precision = choice.precision
    if choice.engine == "openvino":
        say(f"converting {loaded.source} to OpenVINO ({precision}, one clip at a time)")
        xml = openvino_ir.save(openvino_ir.convert(loaded, precision, calibration), directory)
        try:
            module: CheckedModule = openvino_ir.EngineModule(xml, precision)
        except Exception as error:  # OpenVINO's compile errors come from its plugin
            raise openvino_ir.OpenVinoUnavailableError(f"OpenVINO could not compile the model: {error}") from error
        return module, {IR_FILE: xml, IR_WEIGHTS_FILE: xml.with_suffix(".bin")}
    conv_form = conv_form_for(target)
    say(f"tracing {loaded.source} to TorchScript ({precision} weights, {conv_form} convolutions, on {device})")
    artifact = directory / MODEL_FILE
    trace(
        loaded,
        description.sample_rate,
        dtype=precision,
        device=device,
        conv_form=conv_form,
        max_samples=description.max_samples,
        calibration=calibration,
    ).save(str(artifact))
    strip_source_paths(artifact)
    reloaded: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
        str(artifact), map_location=device
    )
    return reloaded, {MODEL_FILE: artifact}


def _provenance(
    loaded: LoadedModel, target: Target, choice: PrecisionChoice, traced_on: str, **measured: object
) -> Provenance:
    return Provenance(
        source_model=loaded.source,
        untrained=loaded.untrained,
        target=target,
        torch_version=torch.__version__,
        transformers_version=transformers.__version__,
        dtype=PROVENANCE_NAMES[choice.precision],
        precision_choice=choice.reason,
        traced_on=traced_on,
        conv_form=conv_form_for(target),
        engine=choice.engine,
        **measured,  # type: ignore[arg-type]
    )


def _fp32_artifact(
    loaded: LoadedModel,
    description: ModelDescription,
    target: Target,
    choice: PrecisionChoice,
    check_lengths: Sequence[int],
    directory: Path,
    say: Progress,
) -> Artifact:
    """fp32: the saved file against eager HF in logits, alone and in one ragged batch, to PARITY_TOLERANCE."""
    sample_rate = description.sample_rate
    module, files = _built(loaded, description, target, choice, directory, say)
    engine = ENGINE_NAMES[choice.engine]
    say(
        f"checking the saved {engine} file against the eager model on {len(check_lengths)} lengths: "
        + ", ".join(f"{n / sample_rate:.2f} s" for n in check_lengths)
    )
    parity = check_parity(module, loaded, description, check_lengths, engine=engine)
    if parity.non_finite:
        raise ExportError("; ".join(parity.non_finite) + " (random noise clips, normalised as the server does)")
    worst = max(parity.max_abs_logit_diff, parity.batched_max_abs_logit_diff)
    if not worst <= PARITY_TOLERANCE:
        if choice.engine_automatic:
            raise openvino_ir.OpenVinoUnavailableError(
                f"OpenVINO's fp32 differs from the eager model by {worst:.3g} in logits (limit {PARITY_TOLERANCE:g})"
            )
        raise ExportError(
            f"{engine} differs from the eager model by {worst:.3g} in logits "
            f"(alone {parity.max_abs_logit_diff:.3g}, batched {parity.batched_max_abs_logit_diff:.3g}); "
            f"the limit is {PARITY_TOLERANCE:g}"
        )
    say(
        f"parity ok: max |Δlogit| {parity.max_abs_logit_diff:.2e} alone, "
        f"{parity.batched_max_abs_logit_diff:.2e} in one ragged batch; max |Δprob| {parity.max_abs_prob_diff:.2e}, "
        f"top-1 agreement {parity.top1_agreement:.0%}"
    )
    provenance = _provenance(
        loaded,
        target,
        choice,
        "cpu",
        max_abs_logit_diff=worst,
        max_abs_prob_diff=parity.max_abs_prob_diff,
        top1_agreement=parity.top1_agreement,
    )
    return provenance, parity, files


def _reduced_artifact(
    loaded: LoadedModel,
    description: ModelDescription,
    target: Target,
    choice: PrecisionChoice,
    gate_speech: Callable[[], GateSpeech],
    directory: Path,
    say: Progress,
    *,
    own_speech: bool,
) -> Artifact | PrecisionChoice:
    """bf16/fp16/int8: the saved file through the speech gate; where `auto` gives up, the PrecisionChoice it
    tries next (PrecisionChoice.fallback). int8 rounds its weights on espeak-ng speech apart from the
    gate's, or, with the operator's own speech (`own_speech`), on some of their files and gates on the rest."""
    precision = choice.precision
    try:
        clips, source = gate_speech()
        calibration: list[FloatArray] = []
        if precision == "int8" and own_speech:
            kept, clips = split_calibration(clips)
            calibration = [normalise(clip, do_normalize=description.do_normalize) for clip in kept]
            seconds = sum(clip.size for clip in kept) / description.sample_rate
            source = f"{source}; {len(kept)} others, {seconds:.0f} s, rounded the int8 weights"
            if seconds < MIN_CALIBRATION_S:
                say(
                    f"warning: int8's weights are rounded on {seconds:.0f} s of your speech ({len(kept)} files); "
                    f"about {MIN_CALIBRATION_S:.0f} s or more rounds them as well as espeak-ng's default does"
                )
        elif precision == "int8":
            calibration = espeak_calibration_speech(description, say)
    except SpeechUnavailableError as error:
        if choice.automatic:
            fallback = choice.fallback(f"no speech to gate {precision} on")
            say(f"warning: no speech for the {precision} gate ({error}); exporting {fallback.precision} instead")
            return fallback
        raise ExportError(f"the {precision} precision gate needs speech: {error}") from error
    device = "cuda" if target != "cpu" and torch.cuda.is_available() else "cpu"
    if precision == "int8":
        how = "GPTQ" if choice.engine == "torchscript" else "NNCF's post-training quantization"
        say(
            f"rounding the encoder's linear maps to int8 ({how} on {len(calibration)} calibration clips: "
            "about a minute at full size on 2 cores)"
        )
    module, files = _built(loaded, description, target, choice, directory, say, calibration=calibration, device=device)
    say(f"precision gate: {precision} against eager fp32 on {len(clips)} speech clips ({source})")
    report = gate(module, loaded, description, clips, source, precision, device, say)
    say(report.summary())
    if report.top1_tested < MIN_TOP1_TESTED:
        say(
            f"warning: the gate's top-1 check tested {report.top1_tested} clip(s): under eager fp32 the other "
            f"{report.ties} are within {report.limits.max_abs_prob_diff:g} of a tie, where a label may go either "
            "way; it vouches for few labels (more or other speech: --gate-audio DIR)"
        )
    if not report.passed:
        verdict = (
            f"the {precision} {ENGINE_NAMES[choice.engine]} fails the precision gate: max |Δprob| "
            f"{report.max_abs_prob_diff:.3g} "
            f"(limit {report.limits.max_abs_prob_diff:g}), top-1 agreement {report.top1_agreement:.1%} "
            f"(limit {report.limits.min_top1_agreement:.0%})"
            if math.isfinite(report.max_abs_prob_diff)
            else f"the {precision} {ENGINE_NAMES[choice.engine]} fails the precision gate: its probabilities (or "
            "eager fp32's) are "
            f"NaN or infinite on some of the {report.clips} speech clips, alone or batched"
        )
        if choice.automatic:
            fallback = choice.fallback(f"{precision} failed the precision gate")
            say(f"warning: {verdict}; exporting {fallback.precision} instead")
            return fallback
        raise ExportError(f"{verdict}: export with --dtype {FALLBACKS[precision]}")
    parity = ParityReport(
        (),
        report.max_abs_logit_diff,
        report.max_abs_logit_diff,
        max_abs_prob_diff=report.max_abs_prob_diff,
        top1_agreement=report.top1_agreement,
    )
    provenance = _provenance(
        loaded,
        target,
        choice,
        device,
        max_abs_logit_diff=report.max_abs_logit_diff,
        max_abs_prob_diff=report.max_abs_prob_diff,
        top1_agreement=report.top1_agreement,
        gate=report.record(),
    )
    return provenance, parity, files
