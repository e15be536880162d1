"""The traced artifact: parity with eager HF, batch invariance, and the export CLI's failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from repositories import refused_export

from emotion_build.export.parity import check_parity
from emotion_build.export.tracing import conv_form_for, trace
from emotion_build.model.batched_classifier import CONV_FORMS, grouped_conv_frames
from emotion_build.model.loading import LoadedModel, load_pretrained, random_model
from emotion_build.repository.description import Provenance

SAMPLE_RATE = 16000
Traced = tuple[LoadedModel, torch.jit.ScriptModule]
"""The tiny model and its TorchScript trace, the pair the parity tests compare."""


@pytest.fixture(scope="module", params=CONV_FORMS)
def traced_tiny(request: pytest.FixtureRequest) -> Traced:
    """Both forms of the convolutions: native (cpu target) and matrix products (GPU targets)."""
    loaded = random_model("tiny", seed=11)
    return loaded, trace(loaded, SAMPLE_RATE, conv_form=request.param)


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 8192])
def test_grouped_conv_frames_is_the_positional_conv(rows_per_chunk: int) -> None:
    """Against PyTorch's own grouped conv (kernel 128, 16 groups, same-pad cut) for any chunking."""
    generator = torch.Generator().manual_seed(rows_per_chunk)
    groups, per_group, kernel, steps = 16, 3, 128, 37
    hidden = torch.randn(4, steps, groups * per_group, generator=generator)
    weight = torch.randn(groups * per_group, per_group, kernel, generator=generator)
    bias = torch.randn(groups * per_group, generator=generator)
    expected = torch.nn.functional.conv1d(hidden.transpose(1, 2), weight, bias, padding=kernel // 2, groups=groups)
    expected = expected[:, :, :steps].transpose(1, 2)
    layout = weight.reshape(groups, per_group, per_group, kernel).permute(0, 2, 3, 1).reshape(groups, -1, per_group)
    actual = grouped_conv_frames(hidden, layout.contiguous(), bias, kernel // 2, rows_per_chunk)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_export_picks_the_conv_form_by_target() -> None:
    assert conv_form_for("cpu") == "native"
    assert conv_form_for("gpu") == conv_form_for("gpu-python") == "matmul"


def test_saved_file_matches_eager_alone_and_batched(traced_tiny: Traced, tmp_path: Path) -> None:
    from emotion_build.export.pipeline import describe
    from emotion_build.repository.description import BatchingSettings

    loaded, scripted = traced_tiny
    scripted.save(str(tmp_path / "m.pt"))
    reloaded = torch.jit.load(str(tmp_path / "m.pt"))  # type: ignore[no-untyped-call]
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30)
    report = check_parity(reloaded, loaded, description, [1600, 4800, 16000, 77777, 160000])
    print(f"tiny parity: alone {report.max_abs_logit_diff:.2e}, batched {report.batched_max_abs_logit_diff:.2e}")
    assert report.max_abs_logit_diff <= 1e-4
    assert report.batched_max_abs_logit_diff <= 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outputs_do_not_depend_on_batch_neighbours(traced_tiny: Traced, seed: int) -> None:
    loaded, scripted = traced_tiny
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(0.3 * SAMPLE_RATE), 15 * SAMPLE_RATE, size=6)
    clips = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in lengths]
    with torch.no_grad():
        alone = [scripted(c, torch.tensor([c.numel()], dtype=torch.int32)) for c in clips]
        order = rng.permutation(len(clips))
        flat = torch.cat([clips[i] for i in order])
        ends = torch.tensor(np.cumsum([lengths[i] for i in order]), dtype=torch.int32)
        batched = scripted(flat, ends)
    for name, index in (("probabilities", 1), ("embedding", 2)):
        reference = torch.cat([alone[i][index] for i in order])
        drift = (batched[index] - reference).abs().max().item()
        print(f"seed {seed}: max |Δ{name}| alone vs mixed batch {drift:.2e}")
        assert drift <= 1e-5
    embedding = batched[2]
    assert embedding.shape == (len(clips), loaded.model.config.classifier_proj_size)
    # The embedding is what the classifier head reads: logits = classifier(embedding).
    torch.testing.assert_close(loaded.model.classifier(embedding), batched[0], rtol=1e-5, atol=1e-5)


def test_base_architecture_has_95m_parameters() -> None:
    loaded = random_model("base")
    parameters = sum(p.numel() for p in loaded.model.parameters())
    assert 94_000_000 < parameters < 96_000_000
    config = loaded.model.config
    assert config.use_weighted_layer_sum and config.classifier_proj_size == 256
    assert config.feat_extract_norm == "group"
    id2label = cast(dict[int, str], config.id2label)
    assert [id2label[i] for i in range(4)] == ["neu", "hap", "ang", "sad"]


def test_unreachable_model_fails_with_one_line_naming_the_ways_out(tmp_path: Path) -> None:
    line = refused_export(tmp_path / "out", "--model", "no-such-org/no-such-model", timeout_s=120)
    assert "--model DIR" in line and "--random-init" in line


def test_local_directory_loads_and_provenance_is_recorded(tiny_model_dir: Path, tiny_repository: Path) -> None:
    loaded = load_pretrained(str(tiny_model_dir))
    assert not loaded.untrained
    provenance = Provenance.from_json((tiny_repository / "classifier" / "1" / "export.json").read_text())
    assert provenance.source_model == str(tiny_model_dir)
    assert provenance.torch_version == torch.__version__
    assert provenance.max_abs_logit_diff is not None and provenance.max_abs_logit_diff <= 1e-4
    assert json.loads((tiny_repository / "classifier" / "1" / "export.json").read_text())["untrained"] is False


def test_random_init_is_marked_untrained_in_output_and_repository(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_build",
            "export",
            "--random-init",
            "tiny",
            "--target",
            "cpu",
            "--output",
            str(tmp_path / "repo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stderr and "UNTRAINED" in result.stdout
    ensemble = (tmp_path / "repo" / "emotion" / "config.pbtxt").read_text()
    assert 'key: "untrained"\n  value {\n    string_value: "true"' in ensemble
