"""What tritonserver is launched with so that the memory a request used is given back afterwards.

Measured with benchmarks/oversize_burst.py on 2.51 (docs/hardening.md, "Oversized requests"): after
12 concurrent requests of 240 MB, all refused, tritonserver kept 4 GiB, for two reasons:

- Triton's gRPC frontend pools up to `--grpc-infer-allocation-pool-size` (default 8) request
  states per inference handler (2 handlers in 2.51 and 2.55) and keeps each pooled state's last
  `ModelInferRequest` protobuf, raw tensor bytes included, until the state is reused; even then
  `Clear()` keeps a string's capacity. Each pooled state could pin the largest request it ever
  held (up to the 2 GiB gRPC message limit). A pool of 0 frees every state with its request.
- glibc malloc keeps what gRPC's receive buffers freed: with a pool of 0 still 1.9 GiB stayed in
  64 MiB arena heaps, fragmented by small long-lived allocations, and neither
  `MALLOC_MMAP_THRESHOLD_` nor `MALLOC_ARENA_MAX=1` returned it. jemalloc, which Triton's own
  docs recommend for memory growth and NVIDIA's container ships, purges freed pages in a
  background thread: tritonserver went back to its baseline.

jemalloc goes into tritonserver only. Triton starts every Python-backend stub through `bash -c`
(python_backend's stub_launcher in 24.10 and 25.02), and bash sources `$BASH_ENV` first: a file
that unsets the preload keeps the stubs on glibc, whose settings the cpu runner tunes itself
(triton_models/heap.py) and whose behaviour the benchmarks measured.
"""

from __future__ import annotations

import ctypes.util
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "GRPC_MEMORY_ARGS",
    "JEMALLOC_CONF",
    "STUB_ENVIRONMENT_SCRIPT",
    "find_jemalloc",
    "memory_environment",
    "stub_environment_file",
]

GRPC_MEMORY_ARGS = ("--grpc-infer-allocation-pool-size=0",)
"""tritonserver flags: no pooled gRPC request state, so no request's bytes outlive it."""

JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
"""Freed pages are reused for a second, then a background thread returns them to the kernel,
idle or not (without the thread, jemalloc only purges when the process allocates again)."""

STUB_ENVIRONMENT_SCRIPT = "unset LD_PRELOAD MALLOC_CONF\n"
"""Sourced by the bash that execs each stub (`BASH_ENV`): the stubs run with glibc malloc."""

_JEMALLOC_NAMES = ("libjemalloc.so.2", "libjemalloc.so")
_LIBRARY_DIRS = (
    Path("/usr/lib/x86_64-linux-gnu"),
    Path("/usr/lib/aarch64-linux-gnu"),
    Path("/usr/lib64"),
    Path("/usr/lib"),
)


def find_jemalloc() -> Path | None:
    """jemalloc's shared library (Debian: libjemalloc2), or None where it is not installed."""
    for directory in _LIBRARY_DIRS:
        for name in _JEMALLOC_NAMES:
            if (directory / name).is_file():
                return directory / name
    found = ctypes.util.find_library("jemalloc")
    return Path(found) if found and Path(found).is_absolute() else None


def stub_environment_file(directory: Path) -> Path:
    """The `BASH_ENV` file, written once into `directory` (atomically: servers may start together)."""
    path = directory / "stub-environment.sh"
    if path.is_file() and path.read_text() == STUB_ENVIRONMENT_SCRIPT:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".stub-environment-", dir=directory)
    with os.fdopen(handle, "w") as stream:
        stream.write(STUB_ENVIRONMENT_SCRIPT)
    os.replace(staging, path)
    return path


def memory_environment(base: Mapping[str, str], *, jemalloc: Path, stub_environment: Path) -> dict[str, str]:
    """`base` with jemalloc preloaded into tritonserver and unloaded again for its stubs.

    An operator's own `LD_PRELOAD` stays after jemalloc (for tritonserver; the stubs lose it as
    they lose jemalloc), and an operator's `MALLOC_CONF` wins over ours."""
    env = dict(base)
    preload = [str(jemalloc), *(p for p in base.get("LD_PRELOAD", "").split(":") if p)]
    env["LD_PRELOAD"] = ":".join(preload)
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env["BASH_ENV"] = str(stub_environment)
    return env
