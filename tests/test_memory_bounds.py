"""The pieces that give back what an oversized request used, without a server: the launcher's
environment (emotion_build.server.memory) and the stubs' page release (triton_models/shm_pages.py)."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from emotion_build.server.memory import (
    JEMALLOC_CONF,
    STUB_ENVIRONMENT_SCRIPT,
    find_jemalloc,
    memory_environment,
    stub_environment_file,
)
from emotion_build.triton_models.shm_pages import page_interior, release_pages

PAGE = mmap.PAGESIZE


@pytest.mark.parametrize(
    ("address", "size", "expected"),
    [
        (0, 4 * PAGE, (0, 4 * PAGE)),
        (1, 4 * PAGE, (PAGE, 3 * PAGE)),  # the partial first and last pages stay
        (PAGE - 1, PAGE + 2, (PAGE, PAGE)),
        (10, PAGE, None),  # no whole page inside
        (PAGE, PAGE - 1, None),
        (5 * PAGE + 7, 0, None),
    ],
)
def test_page_interior_keeps_to_whole_pages_inside_the_tensor(
    address: int, size: int, expected: tuple[int, int] | None
) -> None:
    assert page_interior(address, size, PAGE) == expected


@pytest.fixture
def shared_region() -> Iterator[tuple[Path, mmap.mmap]]:
    """A file in /dev/shm mapped shared, as a Python-backend stub's region is."""
    path = Path("/dev/shm") / f"emotion-test-{uuid.uuid4().hex}"
    size = 64 * PAGE
    with path.open("w+b") as stream:
        stream.truncate(size)
        region = mmap.mmap(stream.fileno(), size, mmap.MAP_SHARED)
    try:
        yield path, region
    finally:
        region.close()
        path.unlink()


def test_release_pages_returns_a_tensors_whole_pages_to_tmpfs_and_nothing_around_it(
    shared_region: tuple[Path, mmap.mmap],
) -> None:
    path, region = shared_region
    everything = np.frombuffer(region, dtype=np.uint8)
    everything[:] = 7
    allocated = os.stat(path).st_blocks
    # A tensor that starts and ends mid-page, like an input behind the allocator's block header.
    start, stop = PAGE + 100, 40 * PAGE + 5
    tensor = everything[start:stop]
    released = release_pages(tensor)
    assert released == 39 * PAGE - PAGE  # pages 2..39 whole; the partial pages 1 and 40 stay
    assert os.stat(path).st_blocks < allocated, "tmpfs still holds the released pages"
    assert (everything[: 2 * PAGE] == 7).all() and (everything[40 * PAGE :] == 7).all()
    assert (everything[2 * PAGE : 40 * PAGE] == 0).all(), "a released page reads back as zeros"
    del everything, tensor


def test_release_pages_leaves_what_it_cannot_release() -> None:
    small = np.ones(10, dtype=np.float32)
    assert release_pages(small) == 0
    private = np.ones(16 * PAGE, dtype=np.uint8)  # private anonymous memory: MADV_REMOVE refuses
    assert release_pages(private) == 0
    assert (private == 1).all()
    assert release_pages(object()) == 0


def test_memory_environment_preloads_jemalloc_for_tritonserver_and_unloads_it_for_stubs(tmp_path: Path) -> None:
    script = stub_environment_file(tmp_path)
    assert script.read_text() == STUB_ENVIRONMENT_SCRIPT
    assert stub_environment_file(tmp_path) == script, "written once, found again"
    jemalloc = tmp_path / "libjemalloc.so.2"
    env = memory_environment({"PATH": "/bin"}, jemalloc=jemalloc, stub_environment=script)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(jemalloc), "MALLOC_CONF": JEMALLOC_CONF, "BASH_ENV": str(script)}
    operator = memory_environment(
        {"LD_PRELOAD": "/opt/a.so", "MALLOC_CONF": "narenas:2"}, jemalloc=jemalloc, stub_environment=script
    )
    assert operator["LD_PRELOAD"] == f"{jemalloc}:/opt/a.so" and operator["MALLOC_CONF"] == "narenas:2"


def test_jemalloc_is_installed_by_make_setup() -> None:
    """make setup's system-deps install libjemalloc2: without it tritonserver keeps what it freed."""
    found = find_jemalloc()
    assert found is not None and found.is_file(), "apt-get install libjemalloc2 (make setup does)"
