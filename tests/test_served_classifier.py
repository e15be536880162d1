"""The module every target serves, without a server: what it answers for clips the model cannot
compute, one row per batch item, and a saved file whose errors quote no build path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emotion_build.export.tracing import conv_form_for, trace
from emotion_build.model.loading import random_model
from emotion_build.model.served_classifier import strip_source_paths

SAMPLE_RATE = 16000
MAX_SAMPLES = 2 * SAMPLE_RATE
"""The export's --max-duration-s of 2 s, in samples."""
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> torch.jit.ScriptModule:
    """Each target's form, saved and stripped as the export writes it, and loaded back."""
    path = tmp_path_factory.mktemp("served") / "model.pt"
    loaded = random_model("tiny", seed=5)
    trace(loaded, SAMPLE_RATE, conv_form=conv_form_for(request.param), max_samples=MAX_SAMPLES).save(str(path))
    strip_source_paths(path)
    module: torch.jit.ScriptModule = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
    return module


def run(module: torch.jit.ScriptModule, clips: list[torch.Tensor]) -> list[torch.Tensor]:
    ends = torch.tensor(np.cumsum([c.numel() for c in clips]), dtype=torch.int32)
    with torch.no_grad():
        return list(module(torch.cat(clips), ends))


def clips() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    good = torch.randn(SAMPLE_RATE, generator=generator)
    nan = good.clone()
    nan[7] = float("nan")
    return {
        "good": good,
        "short": torch.randn(399, generator=generator),
        "one-sample": torch.randn(1, generator=generator),
        "empty": torch.zeros(0),
        "nan": nan,
        "inf": torch.full((800,), float("inf")),
        "overflowing": torch.full((8000,), 3e38),
        "other": torch.randn(4000, generator=generator),
        "longest": torch.randn(MAX_SAMPLES, generator=generator),
        "too-long": torch.randn(MAX_SAMPLES + 1, generator=generator),
    }


def test_clips_the_model_cannot_compute_get_zeros_and_the_rest_their_own_answers(
    served: torch.jit.ScriptModule,
) -> None:
    named = clips()
    together = run(served, list(named.values()))
    for row, (name, clip) in enumerate(named.items()):
        alone = run(served, [clip])
        for output, single in zip(together, alone, strict=True):
            assert torch.isfinite(output[row]).all()
            torch.testing.assert_close(output[row : row + 1], single, atol=1e-6, rtol=0)
        answered = name in ("good", "other", "longest")
        assert bool(alone[1].any()) == answered, f"{name}: {alone[1]}"
        if answered:
            assert abs(float(alone[1].sum()) - 1.0) < 1e-5


def test_a_batch_of_nothing_but_bad_clips_never_runs_the_model_and_still_answers(
    served: torch.jit.ScriptModule,
) -> None:
    named = clips()
    outputs = run(served, [named["short"], named["empty"], named["nan"], named["too-long"]])
    assert [tuple(o.shape) for o in outputs] == [(4, 4), (4, 4), (4, 16)]
    assert not any(o.any() for o in outputs)


def test_item_lengths_give_one_row_per_clip_of_a_multi_clip_request(served: torch.jit.ScriptModule) -> None:
    """Triton gives one accumulated end per request; a request of [2, n] is two clips of n samples."""
    named = clips()
    first, second = named["good"], named["good"].flip(0)
    flat = torch.cat([named["other"], first, second, named["other"]])
    request_ends = torch.tensor([4000, 36000, 40000], dtype=torch.int32)
    items = torch.tensor([[4000], [SAMPLE_RATE], [SAMPLE_RATE], [4000]], dtype=torch.int32)
    with torch.no_grad():
        probabilities = served(flat, request_ends, items)[1]
    expected = torch.cat([run(served, [clip])[1] for clip in (named["other"], first, second, named["other"])])
    torch.testing.assert_close(probabilities, expected, atol=1e-6, rtol=0)


def test_errors_of_the_saved_file_quote_no_build_path(tmp_path: Path) -> None:
    """A traced module's error quotes the Python source it came from; the stripped file only its own code."""
    path = tmp_path / "model.pt"
    traced = torch.jit.trace(torch.nn.Conv1d(1, 1, 400), torch.zeros(1, 1, 800))  # type: ignore[no-untyped-call]
    traced.save(str(path))
    messages = []
    for _ in ("saved", "stripped"):
        module = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
        with pytest.raises(RuntimeError) as caught:
            module(torch.zeros(1, 1, 399))
        messages.append(str(caught.value))
        strip_source_paths(path)
    assert "site-packages" in messages[0] or sys.prefix in messages[0], messages[0]  # what stripping removes
    assert "Kernel size can't be greater than actual input size" in messages[1]
    for path_text in (str(REPO_ROOT), sys.prefix, "site-packages"):
        assert path_text not in messages[1], messages[1]
    assert not [name for name in torch._C.PyTorchFileReader(str(path)).get_all_records() if "debug" in name]
