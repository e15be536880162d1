"""The cpu target's OpenVINO engine: every family converts and keeps fp32 parity, a first single-frame
clip cannot spoil later answers, auto falls back to TorchScript where OpenVINO cannot serve, and the
served IR answers as eager Hugging Face."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from repositories import export_cpu_repository
from test_end_to_end import eager_probabilities, in_label_order

from emotion_build.export import openvino_ir as openvino_export
from emotion_build.export.pipeline import describe, export
from emotion_build.export.precision import choose_precision
from emotion_build.model.families import FAMILY_NAMES, FamilyName
from emotion_build.model.loading import LoadedModel, random_model
from emotion_build.repository.description import BatchingSettings, Provenance
from emotion_build.server.launcher import TritonServer
from emotion_build.triton_models.openvino_engine import OpenVinoEngine
from emotion_client import EmotionClient

RATE = 16000


def export_on(loaded: LoadedModel, output: Path, **options: Any) -> Provenance:
    description = describe(loaded, batching=BatchingSettings(), min_duration_s=0.1, max_duration_s=30.0)
    return export(loaded, output, "cpu", description, progress=lambda _: None, **options).provenance


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_converts_with_fp32_parity(family: FamilyName, tmp_path: Path) -> None:
    provenance = export_on(random_model("tiny", family=family, seed=2), tmp_path / "repo", dtype="fp32")
    assert provenance.engine == "openvino", provenance.precision_choice
    assert provenance.max_abs_logit_diff is not None and provenance.max_abs_logit_diff <= 1e-4
    version = tmp_path / "repo" / "classifier" / "1"
    assert (version / "model.xml").is_file() and (version / "model.bin").is_file()
    assert not (version / "model.pt").exists()
    assert 'string_value: "openvino"' in (tmp_path / "repo" / "classifier" / "config.pbtxt").read_text()


def test_a_first_single_frame_clip_does_not_spoil_later_answers(tmp_path: Path) -> None:
    """OpenVINO 2026.4 answered every later clip of the full-size IR wrongly (logits off by 12) when its
    first inference was one frame (400 samples); the engine runs a 1 s clip first."""
    loaded = random_model("base", seed=1)
    xml = openvino_export.save(openvino_export.convert(loaded, "fp32", ()), tmp_path)
    engine = OpenVinoEngine(xml, threads=2, precision="fp32")
    rng = np.random.default_rng(0)
    clips = [(0.5 * rng.standard_normal(n)).astype(np.float32) for n in (400, 16000, 37000)]
    logits = engine.run(clips)[0]
    with torch.inference_mode():
        eager = torch.cat([loaded.model(input_values=torch.from_numpy(clip)[None]).logits for clip in clips])
    assert float(np.abs(logits - eager.numpy()).max()) < 1e-3


def test_auto_goes_on_with_torchscript_where_openvino_cannot(
    tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any) -> Any:
        raise openvino_export.OpenVinoUnavailableError("OpenVINO could not convert the model: unsupported op")

    monkeypatch.setattr(openvino_export, "convert", refuse)
    provenance = export_on(tiny, tmp_path / "auto", dtype="fp32")
    assert provenance.engine == "torchscript" and "unsupported op" in provenance.precision_choice
    assert (tmp_path / "auto" / "classifier" / "1" / "model.pt").is_file()
    with pytest.raises(Exception, match="--engine openvino: OpenVINO could not convert"):
        export_on(tiny, tmp_path / "explicit", dtype="fp32", engine="openvino")


def test_the_engine_is_the_cpu_targets_and_needs_openvino() -> None:
    with pytest.raises(ValueError, match="cpu target"):
        choose_precision("fp32", "gpu", frozenset(), engine="openvino", openvino=True)
    with pytest.raises(ValueError, match="needs the openvino package"):
        choose_precision("fp32", "cpu", frozenset(), engine="openvino", openvino=False)
    assert choose_precision("fp32", "cpu", frozenset(), engine="auto", openvino=False).engine == "torchscript"
    chosen = choose_precision("auto", "cpu", frozenset({"avx512_bf16"}), engine="auto", openvino=True)
    assert (chosen.engine, chosen.precision, chosen.engine_automatic) == ("openvino", "bf16", True)


def test_the_served_fp32_ir_answers_as_eager_hugging_face(
    tiny_model_dir: Path, tmp_path: Path, hf_classifier: tuple[Any, Any], speech_clips: list[Any]
) -> None:
    repository = export_cpu_repository(tiny_model_dir, tmp_path / "repo", "--engine", "openvino")
    with TritonServer(repository) as server, EmotionClient(server.endpoints.grpc_url, timeout_s=60) as client:
        labels = client.model_info().labels
        results = client.classify_many(speech_clips, RATE)
    for clip, item in zip(speech_clips, results, strict=True):
        assert item.result is not None, item.error
        expected = eager_probabilities(hf_classifier, clip)
        assert float(np.abs(in_label_order(item.result, labels) - expected).max()) <= 1e-4
