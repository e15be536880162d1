"""Accuracy of the served model on labelled audio: manifests, IEMOCAP, and the SUPERB metrics.

IEMOCAP is read exactly as s3prl's emotion recipe does (SUPERB's ER task,
`s3prl/downstream/emotion/IEMOCAP_preprocess.py` and `dataset.py`): utterance labels come from
`Session{N}/dialog/EmoEvaluation/*.txt` lines starting with `[`; only `neu`, `hap`, `ang`, `sad`
and `exc` are kept, `exc` is counted as `hap`; audio is `Session{N}/sentences/wav/<dialog>/<utt>.wav`.
Fold N tests on Session N (the model card's 0.6258 accuracy is fold 1).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IEMOCAP_LABEL_MAP",
    "ClassMetrics",
    "EvaluationReport",
    "LabelledClip",
    "compute_report",
    "read_iemocap",
    "read_manifest",
    "save_confusion_png",
]

IEMOCAP_LABEL_MAP: Mapping[str, str] = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
"""SUPERB's 4-class protocol: excited merges into happy; every other IEMOCAP category is dropped."""


@dataclass(frozen=True, slots=True)
class LabelledClip:
    """One audio file and the label a person gave it."""

    path: Path
    """Audio file."""
    label: str
    """Reference label, already in the model's label set."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassMetrics:
    """How the model does on one class."""

    label: str
    """Class label."""
    precision: float
    """Of the clips predicted as this class, the share that were; NaN when never predicted."""
    recall: float
    """Of the clips of this class, the share predicted as it; NaN when the class has no clips."""
    support: int
    """Number of reference clips of this class."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationReport:
    """Everything `emotion-client evaluate` reports."""

    labels: tuple[str, ...]
    """Class order of the confusion matrix rows (reference) and columns (predicted)."""
    total: int
    """Clips scored (failed clips excluded)."""
    accuracy: float
    """Share of clips whose top label matches the reference (SUPERB's ER metric)."""
    unweighted_recall: float
    """Mean of per-class recalls over classes that have clips (UAR), robust to class imbalance."""
    per_class: tuple[ClassMetrics, ...]
    """Per-class precision, recall and support in ``labels`` order."""
    confusion: tuple[tuple[int, ...], ...]
    """``confusion[i][j]``: clips of ``labels[i]`` predicted as ``labels[j]``."""
    failures: tuple[tuple[str, str], ...] = ()
    """(path, error) for clips that could not be classified."""

    def to_json(self) -> str:
        """A stable JSON document (NaN written as null) for dashboards and regression checks."""
        data = asdict(self)
        for entry in data["per_class"]:
            for key in ("precision", "recall"):
                if isinstance(entry[key], float) and np.isnan(entry[key]):
                    entry[key] = None
        return json.dumps(data, indent=2) + "\n"

    def format_table(self) -> str:
        """Human-readable summary: the headline numbers, per-class rows, and the confusion matrix."""
        lines = [
            f"clips: {self.total}   accuracy: {self.accuracy:.4f}   "
            f"unweighted recall: {self.unweighted_recall:.4f}",
            "",
            f"{'class':<8}{'precision':>10}{'recall':>10}{'support':>9}",
        ]
        lines += [f"{m.label:<8}{m.precision:>10.4f}{m.recall:>10.4f}{m.support:>9d}" for m in self.per_class]
        lines += [
            "",
            "confusion (rows: reference, columns: predicted)",
            " " * 8 + "".join(f"{x:>7}" for x in self.labels),
        ]
        lines += [
            f"{label:<8}" + "".join(f"{n:>7d}" for n in row)
            for label, row in zip(self.labels, self.confusion, strict=True)
        ]
        if self.failures:
            lines += ["", f"{len(self.failures)} clip(s) failed:"] + [
                f"  {path}: {error}" for path, error in self.failures
            ]
        return "\n".join(lines)


def read_manifest(
    path: str | os.PathLike[str], *, label_map: Mapping[str, str] | None = None
) -> list[LabelledClip]:
    """CSV with a header holding `path` and `label` columns; relative paths are relative to the CSV."""
    manifest = Path(path)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest '{manifest}' does not exist")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"manifest '{manifest}' needs columns path,label; missing {', '.join(sorted(missing))}"
            )
        clips = []
        for row_number, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            if label_map is not None:
                if label not in label_map:
                    continue
                label = label_map[label]
            if not row["path"] or not label:
                raise ValueError(f"manifest '{manifest}' line {row_number}: empty path or label")
            clip_path = Path(row["path"].strip())
            clips.append(
                LabelledClip(clip_path if clip_path.is_absolute() else manifest.parent / clip_path, label)
            )
    return clips


_EVALUATION_LINE = re.compile(r"[\t\n]")


def read_iemocap(root: str | os.PathLike[str], *, fold: int) -> list[LabelledClip]:
    """The test set of one fold of SUPERB's IEMOCAP protocol (session `fold`)."""
    if not 1 <= fold <= 5:
        raise ValueError(f"IEMOCAP folds are 1 to 5, got {fold}")
    session = Path(root) / f"Session{fold}"
    label_dir = session / "dialog" / "EmoEvaluation"
    wav_dir = session / "sentences" / "wav"
    if not label_dir.is_dir() or not wav_dir.is_dir():
        raise FileNotFoundError(
            f"'{root}' is not an IEMOCAP release folder: expected {label_dir} and {wav_dir}"
        )
    wavs = {p.stem: p for p in wav_dir.rglob("*.wav")}
    clips = []
    for label_file in sorted(label_dir.glob("*.txt")):
        for line in label_file.read_text(errors="replace").splitlines(keepends=True):
            if not line.startswith("["):
                continue
            fields = [field for field in _EVALUATION_LINE.split(line) if field]
            if len(fields) < 3 or fields[2] not in IEMOCAP_LABEL_MAP or fields[1] not in wavs:
                continue
            clips.append(LabelledClip(wavs[fields[1]], IEMOCAP_LABEL_MAP[fields[2]]))
    return clips


def compute_report(
    references: Sequence[str],
    predictions: Sequence[str],
    *,
    labels: Sequence[str],
    failures: Sequence[tuple[str, str]] = (),
) -> EvaluationReport:
    """Accuracy, UAR, per-class precision/recall and the confusion matrix over the model's labels."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    labels = tuple(labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for label in references if label not in index})
    if unknown:
        raise ValueError(
            f"reference labels {unknown} are not among the model's labels {list(labels)}; map them first"
        )
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for reference, prediction in zip(references, predictions, strict=True):
        confusion[index[reference], index[prediction]] += 1
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    correct = np.diag(confusion)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, correct / support, np.nan)
        precision = np.where(predicted > 0, correct / predicted, np.nan)
    total = int(confusion.sum())
    return EvaluationReport(
        labels=labels,
        total=total,
        accuracy=float(correct.sum() / total) if total else float("nan"),
        unweighted_recall=float(np.nanmean(recall)) if np.any(support > 0) else float("nan"),
        per_class=tuple(
            ClassMetrics(label=label, precision=float(p), recall=float(r), support=int(s))
            for label, p, r, s in zip(labels, precision, recall, support, strict=True)
        ),
        confusion=tuple(tuple(int(n) for n in row) for row in confusion),
        failures=tuple(failures),
    )


def save_confusion_png(report: EvaluationReport, path: str | os.PathLike[str]) -> Path:
    """Confusion matrix as a heat map with counts; needs matplotlib (`pip install emotion-client[plot]`)."""
    plt = _pyplot()
    matrix = np.array(report.confusion)
    figure, axes = plt.subplots(figsize=(1.2 * len(report.labels) + 2, 1.2 * len(report.labels) + 1.5))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(report.labels)), report.labels)
    axes.set_yticks(range(len(report.labels)), report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    axes.set_title(f"accuracy {report.accuracy:.3f}, UAR {report.unweighted_recall:.3f}, n={report.total}")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RuntimeError("plots need matplotlib: pip install 'emotion-client[plot]'") from error
    return plt
