"""`--dtype fp16` for the gpu target: half-precision weights behind the same FP32 interface.

Runs on CPU (torch has half-precision CPU kernels for every op the module uses), on real speech.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from speech import espeak_clips

from emotion_build.export.pipeline import describe, export
from emotion_build.export.precision import GATE_LIMITS
from emotion_build.model.loading import random_model
from emotion_build.repository.description import BatchingSettings, Provenance
from emotion_build.triton_models.waveform import normalise

RATE = 16000
FP16_PROBABILITY_TOLERANCE = GATE_LIMITS["fp16"].max_abs_prob_diff


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    loaded = random_model("tiny", seed=5)
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
    root = tmp_path_factory.mktemp("fp16")
    paths = {}
    for dtype in ("fp32", "fp16"):
        result = export(loaded, root / dtype, "gpu", description, dtype=dtype, progress=lambda _: None)
        paths[dtype] = result.repository
    return paths


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[npt.NDArray[np.float32]]:
    clips = espeak_clips(tmp_path_factory.mktemp("speech"), (0.7, 1.5, 2.5, 4.0, 6.0, 9.0), sample_rate=RATE)
    return [normalise(clip, do_normalize=True) for clip in clips]


def load(repository: Path) -> torch.jit.ScriptModule:
    module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
        str(repository / "classifier" / "1" / "model.pt"), map_location="cpu"
    )
    return module.eval()


def test_provenance_records_the_dtype_and_the_probability_gate(exported: dict[str, Path]) -> None:
    fp16 = Provenance.from_json((exported["fp16"] / "classifier" / "1" / "export.json").read_text())
    fp32 = Provenance.from_json((exported["fp32"] / "classifier" / "1" / "export.json").read_text())
    assert (fp16.dtype, fp32.dtype) == ("float16", "float32")
    assert fp16.max_abs_prob_diff is not None and fp16.max_abs_prob_diff <= FP16_PROBABILITY_TOLERANCE
    assert fp16.top1_agreement == 1.0
    assert fp16.traced_on == ("cuda" if torch.cuda.is_available() else "cpu")
    assert fp16.gate is not None and fp16.gate["passed"] is True and fp16.gate["clips"] == 40
    # The served interface does not move: same configs, FP32 tensors in and out; only the recorded
    # precision of the weights differs.
    for name in ("emotion", "preprocess", "classifier"):
        half, full = ((exported[d] / name / "config.pbtxt").read_text() for d in ("fp16", "fp32"))
        assert half.replace('"float16"', '"float32"') == full


def test_fp16_weights_fp32_tensors_and_parity_on_speech(
    exported: dict[str, Path], speech: list[npt.NDArray[np.float32]]
) -> None:
    fp16, fp32 = load(exported["fp16"]), load(exported["fp32"])
    assert {p.dtype for p in fp16.parameters()} == {torch.float16}
    flat = torch.from_numpy(np.concatenate(speech))
    ends = torch.tensor(np.cumsum([clip.size for clip in speech]), dtype=torch.int32)
    with torch.inference_mode():
        half_outputs, full_outputs = fp16(flat, ends), fp32(flat, ends)
        alone = torch.cat([fp16(torch.from_numpy(c), torch.tensor([c.size], dtype=torch.int32))[1] for c in speech])
    assert [o.dtype for o in half_outputs] == [torch.float32] * 3
    drift = (half_outputs[1] - full_outputs[1]).abs().max().item()
    print(f"fp16 vs fp32 on {len(speech)} speech clips: max |Δprob| {drift:.2e}")
    assert drift <= FP16_PROBABILITY_TOLERANCE
    assert torch.equal(half_outputs[1].argmax(-1), full_outputs[1].argmax(-1))
    # Batch invariance holds in half precision too (statistics and pooling stay float32).
    assert (alone - half_outputs[1]).abs().max().item() <= 1e-3


def test_fp16_is_refused_for_the_cpu_target() -> None:
    loaded = random_model("tiny", seed=5)
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
    with pytest.raises(ValueError, match="GPU targets"):
        export(loaded, Path("unused"), "cpu", description, dtype="fp16")
