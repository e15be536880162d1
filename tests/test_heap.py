"""The cpu runner keeps the memory a batch freed for the next batch (triton_models/heap.py).

Measured as the kernel sees it: minor page faults of allocating and freeing a batch-sized array,
in a fresh interpreter each time, since malloc's settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from emotion_build.repository.configs import all_configs
from emotion_build.repository.description import BatchingSettings, ModelDescription
from emotion_build.triton_models.heap import malloc_set_by_environment

TRITON_MODELS = Path(__file__).resolve().parents[1] / "build" / "emotion_build" / "triton_models"
BATCH_MIB = 64
"""Above the 32 MiB glibc's own adjustment stops at: what a 10 s clip's first convolution returns."""

PROBE = f"""
import ctypes, resource, sys
sys.path.insert(0, {str(TRITON_MODELS)!r})
from heap import keep_freed_memory

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = {BATCH_MIB} * 2**20

def faults_of_one_batch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = libc.malloc(SIZE)
    ctypes.memset(activations, 1, SIZE)
    libc.free(activations)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

first = faults_of_one_batch()
kept = keep_freed_memory(int(sys.argv[1]) * 2**20)
faults_of_one_batch()  # the first batch after the change grows the heap
print(kept, first, faults_of_one_batch(), faults_of_one_batch())
"""


def faults(keep_mib: int) -> tuple[bool, int, int, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, str(keep_mib)], capture_output=True, text=True, check=True)
    kept, *counts = result.stdout.split()
    return kept == "True", *(int(count) for count in counts)  # type: ignore[return-value]


PAGES = BATCH_MIB * 2**20 // 4096


def test_without_it_every_batch_faults_its_pages_in_again() -> None:
    kept, first, second, third = faults(0)
    assert not kept
    assert min(first, second, third) >= 0.9 * PAGES


def test_with_it_later_batches_reuse_the_memory_without_page_faults() -> None:
    kept, first, second, third = faults(512)
    assert kept
    assert first >= 0.9 * PAGES
    assert max(second, third) < 0.01 * PAGES


def test_a_batch_above_the_limit_is_still_given_back() -> None:
    """The limit bounds what an idle instance holds: a larger allocation is mapped and unmapped as before."""
    kept, _, second, third = faults(BATCH_MIB // 2)
    assert kept
    assert min(second, third) >= 0.9 * PAGES


def test_the_cpu_runner_is_configured_to_keep_memory_and_the_gpu_runners_are_not() -> None:
    def parameter(target: str) -> str:
        description = ModelDescription(labels=("neu", "hap"), batching=BatchingSettings.for_target(target))  # type: ignore[arg-type]
        config: mc.ModelConfig = all_configs(description, target)["classifier"]  # type: ignore[arg-type]
        return str(config.parameters["keep_freed_memory_mb"].string_value)

    assert parameter("cpu") == str(BatchingSettings().keep_freed_memory_mb) == "512"
    assert parameter("gpu-python") == "0"
    assert "keep_freed_memory_mb" not in all_configs(ModelDescription(labels=("neu",)), "gpu")["classifier"].parameters


@pytest.mark.parametrize("mib", [-1, 2048])
def test_the_limit_must_fit_mallopt(mib: int) -> None:
    with pytest.raises(ValueError, match="keep_freed_memory_mb"):
        BatchingSettings(keep_freed_memory_mb=mib)


def test_an_operators_malloc_environment_wins() -> None:
    assert malloc_set_by_environment({}) == []
    assert malloc_set_by_environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) == []
    assert malloc_set_by_environment({"MALLOC_MMAP_THRESHOLD_": "131072"}) == ["MALLOC_MMAP_THRESHOLD_"]
    assert malloc_set_by_environment(
        {"MALLOC_TRIM_THRESHOLD_": "0", "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}
    ) == ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]
