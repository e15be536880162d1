"""HF classifier -> TorchScript -> checked against eager -> Triton repository."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import transformers
from torch import nn

from . import openvino_export
from .batched_classifier import ConvForm, RaggedEmotionClassifier
from .description import (
    MAX_ABS_AMPLITUDE,
    MODEL_FILE,
    BatchingSettings,
    ModelDescription,
    Provenance,
    StreamSettings,
    Target,
    receptive_field,
)
from .int8_products import calibrate, unchecked, with_int8_linears
from .loading import LoadedModel
from .openvino_export import OpenVinoUnavailableError, openvino_available
from .precision import (
    FALLBACKS,
    GATE_CLIPS,
    MIN_TOP1_TESTED,
    PROVENANCE_NAMES,
    TORCH_DTYPES,
    EngineRequest,
    GateReport,
    Precision,
    PrecisionChoice,
    PrecisionRequest,
    choose_precision,
    run_gate,
)
from .repository import write_repository
from .served_classifier import UNLIMITED_SAMPLES, serve_form, strip_source_paths
from .speech import VOICES, SpeechUnavailableError, synthesise
from .triton_models.cpu_features import cpu_flags
from .triton_models.openvino_engine import IR_FILE
from .triton_models.waveform import FloatArray, normalise

__all__ = [
    "PARITY_TOLERANCE",
    "ExportError",
    "ExportResult",
    "calibration_speech",
    "check_parity",
    "conv_form_for",
    "describe",
    "export",
    "split_calibration",
    "trace",
]

ENGINE_NAMES = {"torchscript": "TorchScript", "openvino": "OpenVINO"}
IR_WEIGHTS_FILE = "model.bin"
PARITY_TOLERANCE = 1e-4
"""Largest |TorchScript - eager| logit accepted in fp32."""
CALIBRATION_CLIPS = 16
"""espeak-ng clips of 1-10 s that int8's weights are rounded on (about 90 s of speech)."""
CALIBRATION_SEED = 11
"""Not the gate's seed (synthesise's default)."""
MIN_OWN_CLIPS = 3
"""Files int8 needs in --gate-audio: one to round the weights on, two to gate them (far too few to trust)."""
MIN_CALIBRATION_S = 60.0
"""Speech below which the operator is told int8's rounding had little to go on (espeak-ng's 16 clips: ~90 s)."""

Progress = Callable[[str], None]


class ExportError(RuntimeError):
    """The export did not produce an artifact that can be trusted; the message says by how much."""


@dataclasses.dataclass(frozen=True, slots=True)
class ParityReport:
    lengths: tuple[int, ...]
    max_abs_logit_diff: float
    """Each clip alone through the reloaded TorchScript file vs the eager HF model."""
    batched_max_abs_logit_diff: float
    """All clips in one ragged batch vs the eager HF model on each clip alone."""
    max_abs_prob_diff: float = 0.0
    """Largest |Δprobability|, alone or batched."""
    top1_agreement: float = 1.0
    """Share of clips whose most probable class is the eager model's, alone and batched."""
    non_finite: tuple[str, ...] = ()
    """Which side gave NaN or infinite logits, for which clips: a difference of NaN says nothing."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExportResult:
    repository: Path
    description: ModelDescription
    provenance: Provenance
    parity: ParityReport


def describe(
    loaded: LoadedModel,
    *,
    batching: BatchingSettings,
    min_duration_s: float,
    max_duration_s: float,
    max_abs_amplitude: float = MAX_ABS_AMPLITUDE,
    stream: StreamSettings | None = None,
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
    )


def conv_form_for(target: Target) -> ConvForm:
    """GPU targets take the matrix-product convolutions (cuDNN is slow on those two shapes), a CPU the native ones."""
    return "native" if target == "cpu" else "matmul"


def trace(
    loaded: LoadedModel,
    sample_rate: int,
    *,
    dtype: Precision = "fp32",
    device: str = "cpu",
    conv_form: ConvForm = "native",
    max_samples: int = UNLIMITED_SAMPLES,
    calibration: Sequence[FloatArray] = (),
) -> torch.jit.ScriptModule:
    """Trace on `device` with the weights in `dtype` (the eager model itself is left as it is); the
    served guard answers clips over `max_samples` (the export's maximum duration) with its zero row.
    int8 rounds its weights on `calibration` (normalised speech, not the gate's)."""
    model = loaded.model
    if dtype != "fp32":
        model = copy.deepcopy(model)
        nn.Module.to(model, TORCH_DTYPES[dtype])  # in place; transformers' own `to` wrapper confuses mypy
    if dtype == "int8":
        if not calibration:
            raise ValueError("int8 products need calibration speech")
        with_int8_linears(model, loaded.model, calibrate(loaded.model, calibration))
    wrapper = RaggedEmotionClassifier(model, conv_form).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    lengths = [sample_rate, (sample_rate * 3) // 5]
    flat = torch.randn(sum(lengths), generator=generator).to(device)
    ends = torch.tensor(lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(device)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        # WavLM's attention hands torch a bool key-padding mask beside its float position bias, as it does in HF.
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask", category=UserWarning)
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            wrapper, (flat, ends), check_trace=False
        )
        guarded = serve_form(traced, loaded.model.config, max_samples=max_samples)
        unchecked(guarded)  # tracing ran the int8 products here; the saved file checks them where it is loaded
        return guarded


def check_parity(
    scripted: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
    loaded: LoadedModel,
    description: ModelDescription,
    lengths: Sequence[int],
    *,
    device: str = "cpu",
    engine: str = "TorchScript",
) -> ParityReport:
    """The exported module (on `device`; `engine` names it in messages) against the eager fp32 model (on
    CPU), alone and in one batch."""
    rng = np.random.default_rng(1234)
    clips = [
        normalise((0.1 * rng.standard_normal(n)).astype(np.float32), do_normalize=description.do_normalize)
        for n in lengths
    ]

    def run(flat: npt.NDArray[np.float32], ends: Sequence[int]) -> torch.Tensor:
        ends_tensor = torch.tensor(np.asarray(ends), dtype=torch.int32, device=device)
        logits: torch.Tensor = scripted(torch.from_numpy(flat).to(device), ends_tensor)[0]
        return logits.float().cpu()

    with torch.no_grad():
        eager = torch.cat([loaded.model(input_values=torch.from_numpy(clip)[None]).logits for clip in clips])
        alone = torch.cat([run(clip, [clip.size]) for clip in clips])
        batched = run(np.concatenate(clips), np.cumsum(lengths).tolist())
    probabilities = [torch.softmax(logits, dim=-1) for logits in (eager, alone, batched)]
    top1 = [p.argmax(dim=-1) for p in probabilities]
    rate = description.sample_rate
    non_finite = tuple(
        f"{side} gives non-finite logits for the clips of "
        + ", ".join(f"{lengths[i] / rate:.2f} s" for i in bad.nonzero().flatten().tolist())
        for side, logits in (
            ("the eager Hugging Face model (the checkpoint itself)", eager),
            (f"the {engine} export, each clip alone,", alone),
            (f"the {engine} export, the clips in one ragged batch,", batched),
        )
        if bool((bad := ~torch.isfinite(logits).all(dim=-1)).any())
    )
    return ParityReport(
        tuple(int(n) for n in lengths),
        float((alone - eager).abs().max()),
        float((batched - eager).abs().max()),
        max_abs_prob_diff=max(float((p - probabilities[0]).abs().max()) for p in probabilities[1:]),
        top1_agreement=float(torch.cat([top1[1] == top1[0], top1[2] == top1[0]]).float().mean()),
        non_finite=non_finite,
    )


GateSpeech = tuple[Sequence[FloatArray], str]
"""Raw mono clips at the model's rate, and where they came from (for the report)."""


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
) -> ExportResult:
    """Convert, check and write the repository on the engine and in the precision asked for.

    The cpu target runs OpenVINO where it is installed (`engine` auto), else TorchScript; the GPU
    targets TorchScript. `auto` precision takes int8, then bf16, where this CPU computes them
    natively (`machine_flags`: /proc/cpuinfo's by default), else fp32. A reduced precision is traced
    on CUDA when a GPU target has one, and must pass the speech gate (`gate_speech`, or espeak-ng
    clips) against the eager fp32 model; an explicit request fails when it does not, `auto` falls
    back (int8, bf16, fp32) and says why (as it does when there is no speech to gate on), and an
    automatic OpenVINO that cannot convert or check the model gives way to TorchScript."""
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
        speech = functools.cache(lambda: gate_speech or _espeak_gate_speech(description, say))
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
        say(f"writing the {target} repository to {output}")
        write_repository(output, description, target, artifacts=files, provenance=provenance)
    return ExportResult(output, description, provenance, parity)


Artifact = tuple[Provenance, ParityReport, dict[str, Path]]
"""What one attempt made: its record, its check, and the classifier's files by their name in the repository."""
CheckedModule = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]
"""The exported classifier as the checks call it: flat clips and their ends -> logits first."""


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
        xml = openvino_export.save(openvino_export.convert(loaded, precision, calibration), directory)
        try:
            module: CheckedModule = openvino_export.EngineModule(xml, precision)
        except Exception as error:  # OpenVINO's compile errors come from its plugin
            raise openvino_export.OpenVinoUnavailableError(f"OpenVINO could not compile the model: {error}") from error
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
            raise openvino_export.OpenVinoUnavailableError(
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
            calibration = _calibration_speech(description, say)
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
    report = _gate(module, loaded, description, clips, source, precision, device, say)
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


def _speech_range_s(description: ModelDescription) -> tuple[float, float]:
    """1-10 s, within the clip lengths the export accepts."""
    longest = min(10.0, description.max_duration_s)
    return min(max(1.0, description.min_duration_s), longest), longest


def _espeak_gate_speech(description: ModelDescription, say: Progress) -> GateSpeech:
    say(f"synthesising {GATE_CLIPS} speech clips of 1-10 s with espeak-ng for the precision gate")
    shortest, longest = _speech_range_s(description)
    clips = synthesise(GATE_CLIPS, sample_rate=description.sample_rate, min_s=shortest, max_s=longest)
    return clips, f"espeak-ng, {len(VOICES)} voices"


def split_calibration(clips: Sequence[FloatArray]) -> tuple[list[FloatArray], list[FloatArray]]:
    """The operator's clips for int8: every third (at most CALIBRATION_CLIPS) to round the weights on,
    the rest for the gate, so that the gate never judges the rounding on speech it was fitted to."""
    if len(clips) < MIN_OWN_CLIPS:
        raise SpeechUnavailableError(
            f"int8 needs at least {MIN_OWN_CLIPS} files in --gate-audio, some to round its weights on and the "
            f"others, apart, to gate them; found {len(clips)}"
        )
    kept = set(range(0, len(clips), 3)[:CALIBRATION_CLIPS])
    return [clips[i] for i in sorted(kept)], [clip for i, clip in enumerate(clips) if i not in kept]


def calibration_speech(
    sample_rate: int, *, do_normalize: bool, min_s: float = 1.0, max_s: float = 10.0
) -> list[FloatArray]:
    """Speech for int8's weight rounding, normalised as the server feeds it, drawn with another seed than
    the gate's clips (other lengths, speeds and pitches), so that the gate does not judge the rounding
    on the speech it was fitted to."""
    clips = synthesise(CALIBRATION_CLIPS, sample_rate=sample_rate, min_s=min_s, max_s=max_s, seed=CALIBRATION_SEED)
    return [normalise(clip, do_normalize=do_normalize) for clip in clips]


def _calibration_speech(description: ModelDescription, say: Progress) -> list[FloatArray]:
    say(f"synthesising {CALIBRATION_CLIPS} speech clips with espeak-ng to round the int8 weights on")
    shortest, longest = _speech_range_s(description)
    return calibration_speech(
        description.sample_rate, do_normalize=description.do_normalize, min_s=shortest, max_s=longest
    )


def _gate(
    module: CheckedModule,
    loaded: LoadedModel,
    description: ModelDescription,
    clips: Sequence[FloatArray],
    source: str,
    precision: Precision,
    device: str,
    say: Progress,
) -> GateReport:
    normalised = [normalise(clip, do_normalize=description.do_normalize) for clip in clips]

    def forward(flat: FloatArray, ends: Sequence[int]) -> torch.Tensor:
        ends_tensor = torch.tensor(list(ends), dtype=torch.int32, device=device)
        logits: torch.Tensor = module(torch.from_numpy(flat).to(device), ends_tensor)[0]
        return logits.float().cpu()

    def reference(clip: FloatArray) -> torch.Tensor:
        logits: torch.Tensor = loaded.model(input_values=torch.from_numpy(clip)[None]).logits
        return logits

    return run_gate(
        forward,
        reference,
        normalised,
        precision=precision,
        sample_rate=description.sample_rate,
        source=source,
        progress=say,
    )
