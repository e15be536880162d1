"""docs/benchmarks.png: served throughput and p99 latency against concurrency, the other systems as marks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .ranking import best
from .results import Point


def plot(points: Sequence[Point], workloads: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for workload, colour in zip(workloads, colours, strict=False):
        served_ = sorted(
            (p for p in points if p.system == "served" and p.workload == workload), key=lambda p: p.setting
        )
        if not served_:
            continue
        xs = [p.setting for p in served_]
        left.plot(xs, [p.audio_s_per_s for p in served_], "o-", color=colour, label=f"{workload} served")
        right.plot(xs, [p.p99_ms for p in served_], "o-", color=colour, label=f"{workload} served")
        ts = best(points, "torchscript", workload)
        if ts:
            left.axhline(ts.audio_s_per_s, color=colour, linestyle="--", linewidth=1)
        hf = best(points, "hf", workload)
        if hf:
            left.axhline(hf.audio_s_per_s, color=colour, linestyle=":", linewidth=1)
        sdk = best(points, "sdk", workload)
        if sdk:
            left.plot([sdk.setting], [sdk.audio_s_per_s], "s", color=colour, markerfacecolor="none")
            right.plot([sdk.setting], [sdk.p99_ms], "s", color=colour, markerfacecolor="none")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (requests in flight)")
        axis.grid(True, alpha=0.3)
    left.set_ylabel("audio-seconds per second")
    left.set_title("throughput (dashed: in-process best batch, dotted: HF pipeline, □: SDK)", fontsize=9)
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    right.set_title("p99 latency (perf_analyzer; □: SDK classify_many)", fontsize=9)
    left.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
