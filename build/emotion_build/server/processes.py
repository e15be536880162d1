"""What watches a tritonserver's processes: its Python-backend stubs, read from /proc, and the sweep
that leaves none of them, nor their shared memory, behind once the server has exited.

The server runs in its own process group and its stubs join it, so the group is the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from .install import STUB_NAME

__all__ = ["StubProcess", "process_group_members", "python_stubs", "remove_shared_memory", "sweep_process_group"]

_LOGGER = logging.getLogger(__name__)

_STUB_INSTANCE_ARG = 8
"""Position of the instance name ("classifier_0_0") on the 2.51 stub's command line."""
_STUB_SHM_ARG = 2
"""Position of the stub's shared-memory region name on its command line."""
_SHM_DIR = Path("/dev/shm")
_STRAGGLER_GRACE_S = 5.0
"""Stubs notice a dead server within about a second and then free their shared memory themselves."""


@dataclasses.dataclass(frozen=True, slots=True)
class StubProcess:
    """One Python-backend stub: the process that runs one instance of a Python model."""

    pid: int
    instance: str
    """Triton's name for the model instance, e.g. "classifier_0_0"."""
    shm_region: str = ""
    """The shared-memory region (a name in /dev/shm) through which the stub and the server exchange tensors."""

    @property
    def model(self) -> str:
        return self.instance.rsplit("_", 2)[0]


def python_stubs(pgid: int) -> tuple[StubProcess, ...]:
    """The live Python-backend stubs in a server's process group, by pid."""
    stubs = []
    for pid in process_group_members(pgid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(os.fsdecode(argv[0])).name == STUB_NAME and len(argv) > _STUB_INSTANCE_ARG:
            region = os.fsdecode(argv[_STUB_SHM_ARG])
            stubs.append(StubProcess(pid, os.fsdecode(argv[_STUB_INSTANCE_ARG]), region))
    return tuple(sorted(stubs, key=lambda stub: stub.pid))


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields after "pid (comm) "
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def remove_shared_memory(regions: Sequence[str]) -> None:
    """Unlink the stubs' regions that a killed server left in /dev/shm (a clean exit leaves none).

    Only called once every process of the server's group is gone, and the names carry a UUID, so
    nobody else can still be using them."""
    for name in regions:
        if not name.startswith("triton_python_backend_shm_region_") or "/" in name:
            continue
        with contextlib.suppress(FileNotFoundError):
            (_SHM_DIR / name).unlink()
            _LOGGER.info("removed shared memory %s left behind by tritonserver", name)


def sweep_process_group(pgid: int) -> None:
    """Give the stubs of an exited server a moment to notice and clean up, then kill what is left."""
    deadline = time.monotonic() + _STRAGGLER_GRACE_S
    while process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = process_group_members(pgid)
    if leftovers:
        _LOGGER.warning("killing processes left behind by tritonserver: %s", leftovers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
