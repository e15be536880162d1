"""Resident memory of a served repository's processes (tritonserver and its Python-backend stubs).

RSS counts a shared page in full in every process that maps it, and once per mapping: the
Python backend's /dev/shm region is mapped by both tritonserver and the stub, and each time the
region grows both map it again whole and keep the old mapping (python_backend's `old_shm_maps_`),
so pages touched through both count twice. PSS divides each page among its mappings, so PSS summed
over the server's processes counts every page it holds exactly once: the figure bounds are set on.
Used by the soak and oversize tests and by benchmarks/oversize_burst.py.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from emotion_build.server.launcher import TritonServer

if TYPE_CHECKING:
    from typing import Self

__all__ = ["PeakSampler", "Resident", "processes", "region_mib", "resident", "snapshot", "total"]

SHM_DIR = Path("/dev/shm")


@dataclasses.dataclass(frozen=True, slots=True)
class Resident:
    """A live process's resident memory, from /proc/<pid>/status and smaps_rollup, in KiB."""

    rss_kib: int
    pss_kib: int
    shmem_rss_kib: int
    """RSS of shared memory (the stubs' /dev/shm regions), counted per mapping."""


def resident(pid: int) -> Resident:
    def fields(name: str) -> dict[str, int]:
        lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        pairs = (line.partition(":") for line in lines)
        return {key: int(value.split()[0]) for key, _, value in pairs if value.strip().endswith("kB")}

    rollup, status = fields("smaps_rollup"), fields("status")
    if "Pss" not in rollup or "VmRSS" not in status:
        raise AssertionError(f"/proc/{pid} has no resident memory (a zombie?)")
    return Resident(rss_kib=status["VmRSS"], pss_kib=rollup["Pss"], shmem_rss_kib=status["RssShmem"])


def processes(server: TritonServer) -> dict[str, int]:
    """tritonserver and each stub by instance name ("preprocess_0_1"), to pid."""
    assert server.pid is not None
    names = {"tritonserver": server.pid}
    names.update({stub.instance: stub.pid for stub in server.python_stubs()})
    return names


def snapshot(pids: Mapping[str, int]) -> dict[str, Resident]:
    return {name: resident(pid) for name, pid in pids.items()}


def total(memory: Mapping[str, Resident]) -> Resident:
    return Resident(
        rss_kib=sum(m.rss_kib for m in memory.values()),
        pss_kib=sum(m.pss_kib for m in memory.values()),
        shmem_rss_kib=sum(m.shmem_rss_kib for m in memory.values()),
    )


def region_mib(server: TritonServer) -> dict[str, float]:
    """Each stub's shared-memory region: the size it has grown to, which only grows."""
    return {stub.instance: (SHM_DIR / stub.shm_region).stat().st_size / 2**20 for stub in server.python_stubs()}


class PeakSampler:
    """Reads the processes' memory every `interval_s` on a thread while in use; keeps the highest.

    `peak` holds each process's highest RSS and highest PSS (not necessarily read at the same
    moment); `peak_total_pss_kib` is the highest PSS of all the processes summed at one reading."""

    def __init__(self, pids: Mapping[str, int], *, interval_s: float = 0.2) -> None:
        self._pids = dict(pids)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)
        self.peak: dict[str, Resident] = snapshot(self._pids)
        self.peak_total_pss_kib = total(self.peak).pss_kib

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._read()

    def _read(self) -> None:
        now = snapshot(self._pids)
        for name, memory in now.items():
            high = self.peak[name]
            self.peak[name] = Resident(
                rss_kib=max(high.rss_kib, memory.rss_kib),
                pss_kib=max(high.pss_kib, memory.pss_kib),
                shmem_rss_kib=max(high.shmem_rss_kib, memory.shmem_rss_kib),
            )
        self.peak_total_pss_kib = max(self.peak_total_pss_kib, total(now).pss_kib)
