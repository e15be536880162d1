"""What a run tells stderr as it goes: a run takes minutes to hours, and a stalled point must show."""

from __future__ import annotations

import sys
import time

from .results import Point
from .systems import SYSTEM_NAMES


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def describe_point(point: Point) -> str:
    return (
        f"  {SYSTEM_NAMES[point.system]} {point.workload} @ {point.setting}: {point.audio_s_per_s:.2f} audio-s/s, "
        f"p50 {point.p50_ms:.0f} ms, p99 {point.p99_ms:.0f} ms (load {point.load:.1f})"
    )
