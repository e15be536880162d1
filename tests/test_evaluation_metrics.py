"""Evaluation metrics and dataset readers, checked against numbers computed by hand here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emotion_client.evaluation import compute_report, read_iemocap, read_manifest, save_confusion_png

LABELS = ("neu", "hap", "ang", "sad")


def test_metrics_match_a_hand_computed_example() -> None:
    references = ["neu", "neu", "neu", "hap", "hap", "ang", "sad", "sad"]
    predictions = ["neu", "hap", "neu", "hap", "ang", "ang", "sad", "neu"]
    report = compute_report(references, predictions, labels=LABELS)
    assert report.total == 8
    assert report.accuracy == pytest.approx(5 / 8)
    # recalls: neu 2/3, hap 1/2, ang 1/1, sad 1/2 -> UAR = mean
    assert report.unweighted_recall == pytest.approx((2 / 3 + 1 / 2 + 1 + 1 / 2) / 4)
    precision = {m.label: m.precision for m in report.per_class}
    assert precision == pytest.approx({"neu": 2 / 3, "hap": 1 / 2, "ang": 1 / 2, "sad": 1.0})
    assert report.confusion[0] == (2, 1, 0, 0)
    assert report.confusion[3] == (1, 0, 0, 1)
    assert [m.support for m in report.per_class] == [3, 2, 1, 2]


def test_unpredicted_class_has_nan_precision_and_json_null() -> None:
    report = compute_report(["neu", "sad"], ["neu", "neu"], labels=LABELS)
    by_label = {m.label: m for m in report.per_class}
    assert np.isnan(by_label["sad"].precision) and by_label["sad"].recall == 0
    assert np.isnan(by_label["hap"].recall)  # no hap clips: left out of UAR
    assert report.unweighted_recall == pytest.approx((1.0 + 0.0) / 2)
    data = json.loads(report.to_json())
    assert data["per_class"][3]["precision"] is None
    with pytest.raises(ValueError, match="'exc'"):
        compute_report(["exc"], ["hap"], labels=LABELS)


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label\naudio/a.wav,neu\n/abs/b.wav,exc\naudio/c.wav,fru\n")
    clips = read_manifest(manifest, label_map={"neu": "neu", "exc": "hap"})
    assert [(c.path, c.label) for c in clips] == [(tmp_path / "audio" / "a.wav", "neu"), (Path("/abs/b.wav"), "hap")]
    (tmp_path / "bad.csv").write_text("file,emotion\nx.wav,neu\n")
    with pytest.raises(ValueError, match="missing label, path"):
        read_manifest(tmp_path / "bad.csv")


def test_iemocap_follows_the_superb_protocol(tmp_path: Path) -> None:
    session = tmp_path / "Session2"
    wav_dir = session / "sentences" / "wav" / "Ses02F_impro01"
    wav_dir.mkdir(parents=True)
    for name in ("Ses02F_impro01_F000", "Ses02F_impro01_F001", "Ses02F_impro01_M000", "Ses02F_impro01_M001"):
        (wav_dir / f"{name}.wav").write_bytes(b"")
    label_dir = session / "dialog" / "EmoEvaluation"
    label_dir.mkdir(parents=True)
    (label_dir / "Ses02F_impro01.txt").write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes02F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\n"
        "[10.0100 - 11.3925]\tSes02F_impro01_F001\texc\t[3.0000, 3.5000, 3.0000]\n"
        "[14.8872 - 18.0175]\tSes02F_impro01_M000\tfru\t[2.0000, 3.5000, 3.5000]\n"
        "[19.2900 - 20.7875]\tSes02F_impro01_M001\tsad\t[2.0000, 2.0000, 2.0000]\n"
        "[21.0000 - 22.0000]\tSes02F_impro01_M999\tang\t[2.0000, 2.0000, 2.0000]\n"
    )
    clips = read_iemocap(tmp_path, fold=2)
    assert [(c.path.stem, c.label) for c in clips] == [
        ("Ses02F_impro01_F000", "neu"),
        ("Ses02F_impro01_F001", "hap"),  # exc counts as hap
        ("Ses02F_impro01_M001", "sad"),  # fru dropped; M999 has no audio
    ]
    with pytest.raises(FileNotFoundError, match="IEMOCAP"):
        read_iemocap(tmp_path, fold=1)


def test_confusion_png_is_written(tmp_path: Path) -> None:
    report = compute_report(["neu", "hap"], ["neu", "ang"], labels=LABELS)
    out = save_confusion_png(report, tmp_path / "confusion.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
