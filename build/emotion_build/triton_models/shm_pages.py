"""Give a refused oversized input's memory back to the kernel as soon as the stub has refused it.

Triton's Python backend copies every input into the stub's shared-memory region (a file in
/dev/shm) before the stub runs, growing the region to fit. A region never shrinks, and the tmpfs
pages an input was written to stay allocated after the input is freed: one burst of requests far
over the duration limit left each preprocess stub's region holding hundreds of MiB for good
(docs/hardening.md, "Oversized requests"). `release_pages` punches the input's whole pages out of
the file (`madvise(MADV_REMOVE)`), for every process that maps it; the region keeps its size, and
a page written again later is allocated afresh.

Safe because the stub reaches the very bytes Triton wrote (DLPack gives the tensor's address in
the region) and frees only pages that lie entirely inside that one input: the allocator's block
headers around it are untouched, and nobody reads a refused input again (a punched page would read
as zeros).
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np

__all__ = ["MADV_REMOVE", "page_interior", "release_pages"]

MADV_REMOVE = 9
"""Linux madvise advice: free the range and its backing store (tmpfs, shared mappings)."""


def page_interior(address: int, byte_size: int, page_size: int = mmap.PAGESIZE) -> tuple[int, int] | None:
    """(start, length) of the whole pages inside [address, address + byte_size), or None if none."""
    start = -(-address // page_size) * page_size
    end = (address + byte_size) // page_size * page_size
    return (start, end - start) if end > start else None


def release_pages(tensor: Any) -> int:
    """Return the pages of a Python-backend input tensor to the kernel; the bytes released.

    0 where there is nothing to release: a CPU tensor smaller than two pages, a tensor not on the
    CPU, a kernel that refuses (the data then simply stays until the region is reused)."""
    try:
        view = np.from_dlpack(tensor)
    except (AttributeError, TypeError, RuntimeError, BufferError):  # no DLPack, not on the CPU, read-only
        return 0
    interior = page_interior(int(view.ctypes.data), int(view.nbytes))
    if interior is None:
        return 0
    start, length = interior
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return length if libc.madvise(start, length, MADV_REMOVE) == 0 else 0
