"""The bench's interleaved measurements (benchmarks/interleaved.py): what is alternated and what is reported."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from interleaved import MIN_PAIRS, PairedLatency, alternate, c1_pairs


def test_c1_pairs_alternate_clip_by_clip_and_report_serving_outside_the_model() -> None:
    clips = [np.full(n, 0.1, dtype=np.float32) for n in (1600, 3200, 4800)]
    calls: list[tuple[str, int]] = []

    def local(clip: npt.NDArray[np.float32]) -> None:
        calls.append(("local", clip.size))

    def served(clip: npt.NDArray[np.float32]) -> tuple[float, float]:
        calls.append(("served", clip.size))
        return 0.050 + clip.size / 1e6, 0.040 + clip.size / 1e6  # 10 ms outside the model on every request

    paired = c1_pairs(local, served, clips, workload="w", server="s", inprocess="1 thread", budget_s=0.0)
    assert paired.pairs == MIN_PAIRS
    timed = calls[2:]  # one untimed call of each first
    assert calls[:2] == [("local", 1600), ("served", 1600)]
    assert timed[0::2] == [("local", clips[i % 3].size) for i in range(MIN_PAIRS)]
    assert timed[1::2] == [("served", clips[i % 3].size) for i in range(MIN_PAIRS)]
    assert paired.outside_model_p50_ms == pytest.approx(10.0)
    # The local calls take microseconds here, so the served side is what was added.
    assert paired.added_p50_ms == pytest.approx(paired.served_p50_ms, abs=1.0)
    assert paired.added_q25_ms <= paired.added_p50_ms <= paired.added_q75_ms


def test_alternate_runs_every_measurement_once_per_round_in_order() -> None:
    order: list[str] = []

    def measure(name: str) -> Callable[[], str]:
        def run() -> str:
            order.append(name)
            return f"{name}{order.count(name)}"

        return run

    measured = alternate([measure("hf"), measure("inprocess"), measure("served")], rounds=3)
    assert order == ["hf", "inprocess", "served"] * 3
    assert measured == [(f"hf{r}", f"inprocess{r}", f"served{r}") for r in (1, 2, 3)]
    with pytest.raises(ValueError, match="at least 1"):
        alternate([measure("hf")], rounds=0)


@pytest.mark.parametrize(
    ("quartiles", "expected"),
    [((-8.0, 4.0, 20.0), "met"), ((-8.0, 25.0, 50.0), "within noise"), ((6.0, 9.0, 12.0), "not met")],
)
def test_paired_verdict_calls_a_miss_only_when_three_pairs_in_four_miss(
    quartiles: tuple[float, float, float], expected: str
) -> None:
    q25, q50, q75 = quartiles
    pair = PairedLatency("4 s", "s", "1 thread", 8, 1000.0, 1000.0 + q50, 997.0, q50, q25, q75, 3.0, 1.0)
    assert pair.verdict(5.0) == expected


def test_c1_pairs_warm_every_server_instance_before_timing() -> None:
    """Each instance meets a length on its own; the untimed served calls come before any pair."""
    calls: list[str] = []

    def local(clip: npt.NDArray[np.float32]) -> None:
        calls.append("local")

    def served(clip: npt.NDArray[np.float32]) -> tuple[float, float]:
        calls.append("served")
        return 0.01, 0.005

    paired = c1_pairs(
        local,
        served,
        [np.zeros(1600, np.float32)],
        workload="w",
        server="s",
        inprocess="1 thread",
        budget_s=0.0,
        served_warmup=6,
    )
    assert calls[:7] == ["local"] + ["served"] * 6
    assert len(calls) == 7 + 2 * paired.pairs
