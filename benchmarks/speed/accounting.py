"""CPU time of a served system: the server's process group and the load generators this process ran."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path


def group_processes(pgid: int) -> Iterator[tuple[str, float]]:
    """Command line and CPU seconds so far of every live process of a process group (tritonserver
    and its stubs)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            command = (stat.parent / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
        yield command, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by every live process of a process group."""
    return sum(seconds for _, seconds in group_processes(pgid))


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
