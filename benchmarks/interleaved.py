"""Served and in-process timed alternately, so that the machine's drift falls on both alike.

On a shared VM the same in-process point can move by a third within ten minutes (other tenants'
load). A sweep measures each system minutes apart, so its ratios and latency differences carry
that drift; on the 1 s workload it was the size of the targets' margins. Alternating the systems,
clip by clip or round by round, puts the drift on all of them alike:

- `c1_pairs`: a clip in-process at batch 1, then the same clip served alone, over and over. Per
  pair, served minus in-process is the latency serving adds; per request, served minus the
  classifier's own compute (Triton's statistics for that request) is the time spent outside the
  model: gRPC, the ensemble, the preprocess step and the IPC hops, free of the model's noise.
- `alternate`: the best setting of each system (HF pipeline, in-process module, served), a round
  of each in turn; the medians of the rounds' ratios are the served/in-process and served/HF figures.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np

from emotion_build.triton_models.waveform import FloatArray

MIN_PAIRS = 8
"""Fewest pairs per workload, however long the clips: fewer make the median itself noise."""

MEASUREMENT = TypeVar("MEASUREMENT")


@dataclasses.dataclass(frozen=True)
class PairedLatency:
    """c=1 latency of the served system against the in-process module on the same clips, alternately."""

    workload: str
    server: str
    """Which server settings were paired ("2 x 1 thread", "latency-first")."""
    inprocess: str
    """The in-process setting it was paired with ("1 thread", "default threads")."""
    pairs: int
    inprocess_p50_ms: float
    served_p50_ms: float
    compute_p50_ms: float
    """The classifier's compute per served request (Triton's statistics)."""
    added_p50_ms: float
    """Median over pairs of served minus in-process."""
    added_q25_ms: float
    added_q75_ms: float
    outside_model_p50_ms: float
    """Median over requests of served minus the classifier's compute: what serving adds around the model."""
    load: float
    against: str = "in-process"
    """What the served requests were paired with: the in-process module ("in-process"), or one clip
    through the HF pipeline ("hf"), which a lone served request must not be slower than."""

    def verdict(self, target_ms: float) -> Literal["met", "not met", "within noise"]:
        """Met when the median pair is within the target, not met when three pairs in four are above it.

        Between the two the pairs cannot tell: the model's own time, in the server or not, varies by a
        few percent from call to call on a shared VM (tens of milliseconds on a 4 s clip), so a target
        of a few milliseconds is resolved by `outside_model_p50_ms`, not by the pairs."""
        if self.added_p50_ms <= target_ms:
            return "met"
        return "not met" if self.added_q25_ms > target_ms else "within noise"


def c1_pairs(
    local: Callable[[FloatArray], float | None],
    served: Callable[[FloatArray], tuple[float, float]],
    clips: Sequence[FloatArray],
    *,
    workload: str,
    server: str,
    inprocess: str,
    budget_s: float,
    min_pairs: int = MIN_PAIRS,
    served_warmup: int = 1,
    against: str = "in-process",
) -> PairedLatency:
    """`served(clip)` returns (wall seconds, classifier compute seconds) of one request; `local(clip)`
    returns None to be timed here, or the seconds it measured itself (a call run in another process,
    timed there, so that the pipe between the processes is not counted against it).

    Untimed calls first, one in-process and `served_warmup` served (a length neither side has met
    yet must not count, and each server instance meets it on its own: its first clip of a new
    length faults that much memory in), then pairs cycling through `clips` until `budget_s` has
    passed and at least `min_pairs` were timed."""
    local(clips[0])
    for _ in range(served_warmup):
        served(clips[0])
    inprocess_s: list[float] = []
    served_s: list[float] = []
    compute_s: list[float] = []
    start = time.perf_counter()
    while len(served_s) < min_pairs or time.perf_counter() - start < budget_s:
        clip = clips[len(served_s) % len(clips)]
        began = time.perf_counter()
        reported = local(clip)
        inprocess_s.append(time.perf_counter() - began if reported is None else reported)
        wall, compute = served(clip)
        served_s.append(wall)
        compute_s.append(compute)
    local_ms, served_ms, compute_ms = (np.asarray(values) * 1000.0 for values in (inprocess_s, served_s, compute_s))
    q25, q50, q75 = np.percentile(served_ms - local_ms, [25, 50, 75])
    return PairedLatency(
        workload=workload,
        server=server,
        inprocess=inprocess,
        pairs=len(served_ms),
        inprocess_p50_ms=float(np.median(local_ms)),
        served_p50_ms=float(np.median(served_ms)),
        compute_p50_ms=float(np.median(compute_ms)),
        added_p50_ms=float(q50),
        added_q25_ms=float(q25),
        added_q75_ms=float(q75),
        outside_model_p50_ms=float(np.median(served_ms - compute_ms)),
        load=os.getloadavg()[0],
        against=against,
    )


def alternate(measurements: Sequence[Callable[[], MEASUREMENT]], *, rounds: int) -> list[tuple[MEASUREMENT, ...]]:
    """Every measurement once per round, in the order given; round r's k-th result is `[r][k]`."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    return [tuple(measure() for measure in measurements) for _ in range(rounds)]
