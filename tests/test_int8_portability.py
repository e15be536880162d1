"""The int8 artifact where it is served rather than where it was exported: a CPU without int8 dot
products (VNNI, AMX), imitated with `ONEDNN_MAX_CPU_ISA`, makes `torch._int_mm` saturate; the int8
layers find that out on load and compute the same int8 values in float32, so the answers stay the
exported ones (and within the gate's limit of fp32), slower and said to be slower.

A tiny model's sums rarely reach a 16-bit pair's limit, so the served check is on the full-size
architecture with a confident head (`--random-init base`), as the issue that found the drift measured it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from speech import espeak_clips
from test_bf16_export import provenance_of

from emotion_build.export.precision import GATE_LIMITS
from emotion_build.model.loading import random_model
from emotion_build.server.launcher import TritonServer
from emotion_build.triton_models.cpu_features import (
    NATIVE_INT8_FLAGS,
    cpu_flags,
    emulation_warning,
    refuse_int8_off_cpu,
)
from emotion_client import EmotionClient

RATE = 16000
INT8_LIMIT = GATE_LIMITS["int8"].max_abs_prob_diff
WITHOUT_VNNI = {"AVX2": "avx2", "AVX512_CORE": "avx512"}
"""oneDNN's cap for CPUs without int8 dot products (EPYC Milan, Broadwell; Skylake-SP) and ATen's own
kernel level on such a CPU."""
HAS_VNNI = bool(set(NATIVE_INT8_FLAGS) & set(cpu_flags(environ={})))


def imitating(isa: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    if isa is not None:
        env |= {"ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": WITHOUT_VNNI[isa]}
    return env


def run_python(code: str, isa: str | None) -> Any:
    """`code` in a fresh interpreter on the imitated CPU (oneDNN reads its cap once, at first use); its
    last stdout line, as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code], env=imitating(isa), capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


SATURATION = """
import json, torch
from emotion_build.model.int8_products import Int8Linear
layer = torch.jit.script(Int8Linear(torch.full((64, 768), 127.0), torch.ones(64), None, torch.float32))
hidden = torch.ones(3, 768)
raw = torch._int_mm(torch.full((3, 768), 127, dtype=torch.int8), torch.full((768, 64), 127, dtype=torch.int8))
found = {"raw": float(raw.double().max()), "layer": float(layer(hidden).max()), "products": int(layer.products)}
print(json.dumps(found))
"""


@pytest.mark.parametrize("isa", [None, *WITHOUT_VNNI])
def test_int_mm_saturates_without_vnni_and_the_int8_layer_stays_exact(isa: str | None) -> None:
    found = run_python(SATURATION, isa)
    if isa is None and not HAS_VNNI:
        pytest.fail("this machine has no int8 dot products: the native case is the saturating one")
    exact = 127 * 127 * 768
    assert (found["raw"] == exact) == (isa is None), found  # what the kernels alone answer
    assert found["layer"] == exact / 127  # ones quantise to 127 at scale 1/127: the exact sum, rescaled
    assert found["products"] == (1 if isa is None else 2)  # int8 kernels, or float32 products


LAZY_CHECK = """
import json, sys, torch
from emotion_build.triton_models.cpu_features import int8_layers
module = torch.jit.load(sys.argv[1]).eval()
saved = sorted({int(layer.products) for layer in int8_layers(module)})
with torch.inference_mode():
    module(torch.randn(16000), torch.tensor([16000], dtype=torch.int32))
print(json.dumps({"saved": saved, "after": sorted({int(layer.products) for layer in int8_layers(module)})}))
"""


@pytest.fixture(scope="module")
def tiny_int8_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from repositories import export_cpu_repository

    output = tmp_path_factory.mktemp("int8-file") / "model_repository"
    repository = export_cpu_repository(tiny_model_dir, output, "--dtype", "int8", "--classifier-instances", "1")
    return repository / "classifier" / "1" / "model.pt"


@pytest.mark.parametrize("isa", [None, "AVX2"])
def test_a_saved_int8_file_checks_its_products_on_the_cpu_that_runs_it(tiny_int8_file: Path, isa: str | None) -> None:
    """What Triton's libtorch backend gets: no runner calls the check, forward() does it before its first product."""
    code = LAZY_CHECK.replace("sys.argv[1]", repr(str(tiny_int8_file)))
    found = run_python(code, isa)
    assert found["saved"] == [0]  # the export's own check is not saved
    assert found["after"] == [1 if isa is None else 2]


def test_int8_is_refused_off_the_cpu_and_the_warning_names_the_instructions() -> None:
    with pytest.raises(ValueError, match=r"int8 products run on a CPU only.*cuda.*KIND_CPU.*--dtype fp16"):
        refuse_int8_off_cpu("int8+bfloat16", "cuda")
    refuse_int8_off_cpu("int8+bfloat16", "cpu")
    refuse_int8_off_cpu("float16", "cuda")
    zen4 = frozenset({"avx512_bf16", "avx512_vnni"})
    assert emulation_warning("int8+bfloat16", zen4, int8_exact=True) is None
    warning = emulation_warning("int8+bfloat16", zen4, int8_exact=False)
    assert warning is not None and "float32 products" in warning and "avx512_vnni" in warning
    assert "bf16 runs emulated" not in warning
    assert emulation_warning("int8+bfloat16", zen4 - {"avx512_vnni"}) is not None  # no check run: the flags


def test_onednn_s_isa_cap_takes_away_the_instructions_it_forbids(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n")
    assert {"avx512_vnni", "amx_int8"} <= cpu_flags(cpuinfo, environ={})
    assert cpu_flags(cpuinfo, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"}) == {"avx2", "avx512f"}
    assert cpu_flags(cpuinfo, environ={"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}) == {"avx2", "avx512f", "avx512_vnni"}
    assert "amx_int8" in cpu_flags(cpuinfo, environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})


@pytest.fixture(scope="module")
def base_int8_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full-size architecture, random weights with a confident head, TorchScript's int8 as a VNNI
    machine exports it (about two minutes on two cores: GPTQ on 16 clips, the gate on 40)."""
    output = tmp_path_factory.mktemp("base-int8") / "model_repository"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_build",
            "export",
            "--random-init",
            "base",
            "--seed",
            "0",
            "--target",
            "cpu",
            "--dtype",
            "int8",
            "--engine",
            "torchscript",
            "--classifier-instances",
            "1",
            "--intra-op-threads",
            "2",
            "--output",
            str(output),
        ],
        check=True,
        capture_output=True,
        env={**imitating(None), "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert provenance_of(output).dtype == "int8+bfloat16"
    return output


@pytest.fixture(scope="module")
def base_clips(tmp_path_factory: pytest.TempPathFactory) -> list[npt.NDArray[np.float32]]:
    """Short: bf16 without native instructions runs oneDNN's reference kernels under the AVX2 cap (~0.4 audio-s/s)."""
    return espeak_clips(tmp_path_factory.mktemp("base-speech"), (1.0, 1.7, 2.6), sample_rate=RATE)


@pytest.fixture(scope="module")
def base_eager(base_clips: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """Eager fp32 Hugging Face probabilities of the same random model, normalised as the server does."""
    from emotion_build.triton_models.waveform import normalise

    model = random_model("base", seed=0).model
    with torch.inference_mode():
        rows = [
            torch.softmax(model(input_values=torch.from_numpy(normalise(clip, do_normalize=True))[None]).logits, -1)[0]
            for clip in base_clips
        ]
    return torch.stack(rows).numpy()


@pytest.fixture(params=list(WITHOUT_VNNI))
def server_without_vnni(
    request: pytest.FixtureRequest, base_int8_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TritonServer]:
    for key, value in imitating(request.param).items():
        monkeypatch.setenv(key, value)
    with TritonServer(base_int8_repository) as server:
        yield server


def test_the_int8_artifact_served_without_vnni_keeps_the_gates_promise_and_says_it_is_slow(
    server_without_vnni: TritonServer, base_clips: list[npt.NDArray[np.float32]], base_eager: npt.NDArray[np.float32]
) -> None:
    with EmotionClient(server_without_vnni.endpoints.grpc_url, timeout_s=300) as client:
        labels = client.model_info().labels
        results = [client.classify(clip, RATE) for clip in base_clips]
    served = np.array([[dict((s.label, s.score) for s in r.scores)[label] for label in labels] for r in results])
    drift = float(np.abs(served - base_eager).max())
    print(f"int8 served under {os.environ['ONEDNN_MAX_CPU_ISA']} vs eager fp32: max |Δprob| {drift:.2e}")
    assert drift <= INT8_LIMIT
    top = np.sort(base_eager, axis=1)
    decisive = top[:, -1] - top[:, -2] > INT8_LIMIT
    assert (served.argmax(1) == base_eager.argmax(1))[decisive].all()
    log = server_without_vnni.log_text()
    assert "SLOW:" in log and "int8 products run as float32 products" in log
    with urllib.request.urlopen(server_without_vnni.endpoints.metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    (line,) = [row for row in metrics.splitlines() if row.startswith("emotion_classifier_precision_emulated{")]
    assert line.endswith(" 1")
