"""Which settings the bench's rounds measure again, and which figure of each round counts
(benchmarks/speed/ranking.py): a sweep point misjudged by noise must still get its chance."""

from __future__ import annotations

from speed.ranking import contenders, fastest_per_round
from speed.results import Point
from speed.systems import HF_SYSTEMS


def point(system: str, setting: int, speed: float, workload: str = "1 s") -> Point:
    return Point(system, workload, setting, speed, speed, 0.0, 0.0, 0.0, None, 0.0)


SWEEP = [
    point("served", 1, 3.4),
    point("served", 2, 6.7),
    point("served", 4, 7.1),
    point("served", 8, 6.0),  # the noisy point of the 2026-11-26 run
    point("served", 8, 9.9, workload="4 s"),
    point("torchscript", 1, 6.9),
    point("torchscript", 2, 8.1),
    point("torchscript", 4, 8.6),
    point("torchscript", 8, 9.3),
    point("hf", 1, 6.3),
    point("hf_batch", 4, 8.1),
]


def settings(points: tuple[Point, ...]) -> list[tuple[str, int]]:
    return [(p.system, p.setting) for p in points]


def test_contenders_are_the_best_and_the_next_larger_setting() -> None:
    assert settings(contenders(SWEEP, "served", "1 s")) == [("served", 4), ("served", 8)]


def test_contenders_step_down_when_the_best_is_the_largest_setting() -> None:
    assert settings(contenders(SWEEP, "torchscript", "1 s")) == [("torchscript", 8), ("torchscript", 4)]


def test_contenders_of_the_hf_pipeline_are_both_its_rows() -> None:
    assert settings(contenders(SWEEP, HF_SYSTEMS, "1 s")) == [("hf_batch", 4), ("hf", 1)]
    faster_per_call = [*SWEEP[:-1], point("hf_batch", 4, 5.0)]
    assert settings(contenders(faster_per_call, HF_SYSTEMS, "1 s")) == [("hf", 1), ("hf_batch", 4)]


def test_contenders_of_a_single_point_or_none() -> None:
    assert settings(contenders(SWEEP, "served", "4 s")) == [("served", 8)]
    assert contenders(SWEEP, "served", "10 s") == ()


def test_each_round_counts_the_faster_contender_of_each_system() -> None:
    rounds = [
        (point("torchscript", 8, 9.0), point("served", 4, 8.2), point("torchscript", 4, 8.7), point("served", 8, 8.6)),
        (point("torchscript", 8, 8.5), point("served", 4, 8.4), point("torchscript", 4, 8.9), point("served", 8, 8.1)),
    ]
    assert settings(fastest_per_round(rounds, "served")) == [("served", 8), ("served", 4)]
    assert [p.audio_s_per_s for p in fastest_per_round(rounds, "torchscript")] == [9.0, 8.9]


def test_every_system_is_measured_twice_a_round_after_a_whole_warm_pass() -> None:
    """The HF pipeline one clip per call has one setting: it runs twice, as the served system's two
    concurrencies do, and every measurement starts with an untimed pass over all the workload's clips."""
    import numpy as np
    from speed.rounds import twice
    from speed.timing import timed_loop
    from speed.workloads import Workload

    def one() -> Point:
        return point("hf", 1, 1.0)

    def other() -> Point:
        return point("hf", 1, 2.0)

    assert twice([one]) == [one, one] and twice([one, other]) == [one, other]
    clips = [np.zeros(16000 + k, np.float32) for k in range(5)]
    seen: list[int] = []
    workload = Workload("1 s", tuple(clips))
    timed_loop(lambda batch: seen.append(batch[0].size), workload, 1, system="hf", budget_s=0.0, min_calls=2)
    assert seen[:5] == [clip.size for clip in clips] and len(seen) == 7  # the warm pass, then two timed calls
