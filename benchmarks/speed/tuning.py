"""Dynamic-batching settings measured one server at a time (--tune), on one exported repository."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from emotion_build.repository.description import BatchingSettings

from .progress import log
from .results import TuneResult
from .served import first_requests, rewrite_configs, served, served_points
from .workloads import Workload


def _candidate(
    batch: int,
    delay_us: int,
    instances: int,
    threads: int,
    *,
    preferred: int = 4,
    preprocess: int = 2,
    padding: float = 0.1,
    warmup: int = 2,
) -> BatchingSettings:
    return dataclasses.replace(
        BatchingSettings(),
        max_batch_size=batch,
        preferred_batch_size=preferred,
        max_queue_delay_us=delay_us,
        classifier_instances=instances,
        intra_op_threads=threads,
        preprocess_instances=preprocess,
        max_padding_fraction=padding,
        warmup_count=warmup,
    )


TUNE_CANDIDATES: tuple[BatchingSettings, ...] = (
    _candidate(32, 2000, 1, 0, preferred=0, padding=math.inf),  # the settings before any tuning
    _candidate(8, 0, 1, 2),
    _candidate(8, 0, 2, 1),
    _candidate(8, 0, 2, 1, preferred=0),  # the settings before the preferred cut
    _candidate(4, 0, 2, 1),
    _candidate(8, 2000, 2, 1),
    _candidate(8, 0, 2, 1, padding=math.inf),
    _candidate(8, 0, 2, 1, preprocess=1),
    _candidate(8, 0, 2, 2),
    _candidate(8, 0, 2, 1, warmup=0),
)
"""Complete settings, so a row means the same whatever the defaults are; the first row is the
repository's settings before any tuning (whole batches: no length groups)."""


def tune(
    repository: Path,
    workloads: Sequence[Workload],
    *,
    concurrencies: Sequence[int],
    budget_s: float,
    expected: dict[str, float],
    only: Sequence[int] | None,
    after_each: Callable[[list[TuneResult]], None],
) -> list[TuneResult]:
    results: list[TuneResult] = []
    for index, settings in enumerate(TUNE_CANDIDATES):
        if only is not None and index not in only:
            continue
        log(f"tuning candidate {index}: {settings}")
        rewrite_configs(repository, settings)
        failures: list[str] = []
        with served(repository, None) as (url, pgid, _):
            first = first_requests(url, workloads)
            points = served_points(
                url,
                pgid,
                workloads,
                concurrencies=concurrencies,
                budget_s=budget_s,
                expected=expected,
                with_sdk=False,
                failures=failures,
            )
        results.append(TuneResult(settings, points, first, failures))
        after_each(results)
    rewrite_configs(repository, BatchingSettings())
    return results
