"""The marked sections of docs/benchmarks.md that the benchmarks write their tables into."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKERS = {
    "throughput": ("<!-- throughput:begin -->", "<!-- throughput:end -->"),
    "tune": ("<!-- tune:begin -->", "<!-- tune:end -->"),
    "precision": ("<!-- precision:begin -->", "<!-- precision:end -->"),
    "variants": ("<!-- variants:begin -->", "<!-- variants:end -->"),
    "overhead": ("<!-- overhead:begin -->", "<!-- overhead:end -->"),
    "throughput-gpu": ("<!-- throughput-gpu:begin -->", "<!-- throughput-gpu:end -->"),
    "precision-gpu": ("<!-- precision-gpu:begin -->", "<!-- precision-gpu:end -->"),
    "variants-gpu": ("<!-- variants-gpu:begin -->", "<!-- variants-gpu:end -->"),
    "jit": ("<!-- jit:begin -->", "<!-- jit:end -->"),
    "jit-gpu": ("<!-- jit-gpu:begin -->", "<!-- jit-gpu:end -->"),
    "live": ("<!-- live:begin -->", "<!-- live:end -->"),
}


def write_section(path: Path, key: str, body: str) -> None:
    begin, end = MARKERS[key]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
