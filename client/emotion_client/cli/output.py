"""How results are printed: the table, JSON Lines and CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any, TextIO

from ..results import BatchItem, EndpointHealth, ModelInfo


def format_table(items: Sequence[BatchItem]) -> str:
    """The default output: one aligned row per file, failures included with their reason."""
    rows = [("FILE", "LABEL", "SCORE", "ALL SCORES")]
    for item in items:
        name = str(item.source)
        if item.result is not None:
            scores = "  ".join(f"{s.label} {s.score:.3f}" for s in item.result.scores)
            rows.append((name, item.result.label, f"{item.result.score:.3f}", scores))
        else:
            rows.append((name, "ERROR", "-", f"{type(item.error).__name__}: {item.error}"))
    return render_rows(rows)


def render_rows(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]
    return "".join(line.rstrip() + "\n" for line in lines)


def item_dict(item: BatchItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(item.source)}
    if item.result is not None:
        entry["label"] = item.result.label
        entry["score"] = item.result.score
        entry["scores"] = [{"label": s.label, "score": s.score} for s in item.result.scores]
        entry["untrained"] = item.result.untrained
    else:
        entry["error"] = {"type": type(item.error).__name__, "message": str(item.error)}
    return entry


def write_json_lines(items: Sequence[BatchItem], stream: TextIO) -> None:
    for item in items:
        stream.write(json.dumps(item_dict(item)) + "\n")


def write_csv(items: Sequence[BatchItem], info: ModelInfo, stream: TextIO) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["path", "label", "score", *info.labels, "error"])
    for item in items:
        if item.result is not None:
            by_label = {s.label: f"{s.score:.6f}" for s in item.result.scores}
            writer.writerow(
                [
                    str(item.source),
                    item.result.label,
                    f"{item.result.score:.6f}",
                    *(by_label.get(label, "") for label in info.labels),
                    "",
                ]
            )
        else:
            error = f"{type(item.error).__name__}: {item.error}"
            writer.writerow([str(item.source), "", "", *("" for _ in info.labels), error])


def health_dict(entry: EndpointHealth) -> dict[str, Any]:
    return {"url": entry.url, "live": entry.live, "ready": entry.ready, "error": entry.error}


def info_dict(info: ModelInfo) -> dict[str, Any]:
    return {
        "model_name": info.model_name,
        "labels": list(info.labels),
        "sample_rate": info.sample_rate,
        "min_duration_s": info.min_duration_s,
        "max_duration_s": info.max_duration_s,
        "untrained": info.untrained,
        "weights_dtype": info.weights_dtype,
        "engine": info.engine,
        "family": info.family,
        "stream_model": info.stream_model,
    }


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
