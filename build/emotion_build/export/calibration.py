"""The speech a reduced precision is judged on, and int8 is rounded on: espeak-ng's, or the operator's own,
never the same clips for both; and the gate run on a module as the export checks it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..model.loading import LoadedModel
from ..repository.description import ModelDescription
from ..triton_models.waveform import FloatArray, normalise
from .parity import CheckedModule
from .precision import GATE_CLIPS, GateReport, Precision, run_gate
from .speech import VOICES, SpeechUnavailableError, synthesise

__all__ = [
    "CALIBRATION_CLIPS",
    "MIN_CALIBRATION_S",
    "MIN_OWN_CLIPS",
    "GateSpeech",
    "calibration_speech",
    "espeak_calibration_speech",
    "espeak_gate_speech",
    "gate",
    "split_calibration",
]

Progress = Callable[[str], None]

CALIBRATION_CLIPS = 16
"""espeak-ng clips of 1-10 s that int8's weights are rounded on (about 90 s of speech)."""


CALIBRATION_SEED = 11
"""Not the gate's seed (synthesise's default)."""


MIN_OWN_CLIPS = 3
"""Files int8 needs in --gate-audio: one to round the weights on, two to gate them (far too few to trust)."""


MIN_CALIBRATION_S = 60.0
"""Speech below which the operator is told int8's rounding had little to go on (espeak-ng's 16 clips: ~90 s)."""


GateSpeech = tuple[Sequence[FloatArray], str]
"""Raw mono clips at the model's rate, and where they came from (for the report)."""


def speech_range_s(description: ModelDescription) -> tuple[float, float]:
    """1-10 s, within the clip lengths the export accepts."""
    longest = min(10.0, description.max_duration_s)
    return min(max(1.0, description.min_duration_s), longest), longest


def espeak_gate_speech(description: ModelDescription, say: Progress) -> GateSpeech:
    say(f"synthesising {GATE_CLIPS} speech clips of 1-10 s with espeak-ng for the precision gate")
    shortest, longest = speech_range_s(description)
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


def espeak_calibration_speech(description: ModelDescription, say: Progress) -> list[FloatArray]:
    say(f"synthesising {CALIBRATION_CLIPS} speech clips with espeak-ng to round the int8 weights on")
    shortest, longest = speech_range_s(description)
    return calibration_speech(
        description.sample_rate, do_normalize=description.do_normalize, min_s=shortest, max_s=longest
    )


def gate(
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
