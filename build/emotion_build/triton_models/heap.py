"""Let a CPU runner keep the memory one batch freed for the next, instead of faulting it in again.

glibc gives each allocation above its mmap threshold (which it raises by itself to at most 32 MiB)
fresh pages from the kernel and unmaps them at free, and it trims free memory at the top of the
heap beyond a similar bound. The activations of a CPU batch are tens to hundreds of MB (the first
convolution's output alone is 512 x 3,200 floats per second of audio), so every batch touched
fresh pages: about 96,000 page faults for one 10 s clip, and the model's own time went up by
10-25 % on 1 s batches of 4 and on 10 s clips (docs/benchmarks.md, "Where the time went").
Raising both thresholds to a limit keeps up to that much freed memory in the heap: after the
first batch of a size, no page faults, at the price of the process holding memory it is not
using between batches (bounded: an allocation above the limit is still mapped and unmapped).

An operator who set malloc up in the environment (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
or glibc.malloc tunables in `GLIBC_TUNABLES`, inherited by every stub) has decided already: the
runner then leaves malloc alone. The soak test relies on that to make a leak show in RSS.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["keep_freed_memory", "malloc_set_by_environment"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""mallopt() parameter numbers from glibc's malloc.h."""


def malloc_set_by_environment(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The environment variables through which the operator already chose malloc's thresholds."""
    chosen = [name for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if name in environ]
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    return chosen


def keep_freed_memory(limit_bytes: int) -> bool:
    """Whether this process's malloc now keeps up to `limit_bytes` of freed memory.

    Process-wide, which is right for a Triton stub: each model instance is its own process. 0
    leaves malloc as it is. False where the C library has no glibc `mallopt` or refuses the value;
    the runner still works then, only slower on large batches."""
    if limit_bytes <= 0:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    limit = min(limit_bytes, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
