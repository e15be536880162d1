"""The exported TorchScript artifact runs in libtorch with no Python interpreter.

A small C++ program (tests/libtorch/run_model.cc) is compiled against the pip torch's own libtorch,
loads ``classifier/1/model.pt`` from the exported repository, runs a ragged batch, and must give the
same logits and probabilities as ``torch.jit.load`` in Python on the same inputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from emotion_build.export import conv_form_for, trace
from emotion_build.loading import load_pretrained

SOURCE = Path(__file__).resolve().parent / "libtorch" / "run_model.cc"
SAMPLE_RATE = 16_000
CLIP_SECONDS = (0.3, 1.0, 2.5)
TOLERANCE = 1e-5
# The tiny random model's logits are only ~1e-2 in size, so the absolute bound alone would let a 0.1%
# error through; the difference must also be this small relative to the largest logit.
RELATIVE_TOLERANCE = 1e-5
# What the binary runs with: no PYTHONPATH/PYTHONHOME/VIRTUAL_ENV, libraries found through its rpath.
# One intra-op thread on both sides (as the test export's Triton config) keeps reductions in one order.
BARE_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "OMP_NUM_THREADS": "1"}


def torch_dir() -> Path:
    directory = Path(torch.__file__).resolve().parent
    # cmake_prefix_path is <torch>/share/cmake; both must name the same install.
    assert Path(torch.utils.cmake_prefix_path).resolve().parents[1] == directory
    return directory


@pytest.fixture(scope="session")
def run_model_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compiles run_model.cc once per session with g++, against the pip torch's headers and libraries."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.fail("g++ is needed to build the libtorch test program")
    root = torch_dir()
    binary = tmp_path_factory.mktemp("libtorch") / "run_model"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        compiler,
        "-std=c++17",
        "-O1",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-isystem",
        str(root / "include"),
        "-isystem",
        str(root / "include" / "torch" / "csrc" / "api" / "include"),
        str(SOURCE),
        "-o",
        str(binary),
        f"-L{root / 'lib'}",
        "-Wl,--no-as-needed",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-Wl,--as-needed",
        f"-Wl,-rpath,{root / 'lib'}",
    ]
    started = time.perf_counter()
    compiled = subprocess.run(command, check=False, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if compiled.returncode != 0:
        pytest.fail(f"compiling {SOURCE.name} failed ({compiled.returncode}):\n{' '.join(command)}\n{compiled.stderr}")
    print(f"\ncompiled {SOURCE.name} against {root} (CXX11 ABI={abi}) in {elapsed:.1f} s")
    return binary


def ragged_batch() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    rng = np.random.default_rng(7)
    clips = [rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32) for seconds in CLIP_SECONDS]
    ends = np.cumsum([clip.size for clip in clips]).astype(np.int32)
    return np.concatenate(clips), ends


def write_input(path: Path, waveform: npt.NDArray[np.float32], ends: npt.NDArray[np.int32]) -> None:
    with path.open("wb") as handle:
        handle.write(np.int32(ends.size).tobytes())
        handle.write(ends.astype(np.int32).tobytes())
        handle.write(waveform.astype(np.float32).tobytes())


def read_output(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    raw = path.read_bytes()
    rows, classes = np.frombuffer(raw, dtype=np.int32, count=2)
    values = np.frombuffer(raw, dtype=np.float32, offset=8)
    assert values.size == 2 * rows * classes, f"output holds {values.size} floats for shape [{rows}, {classes}]"
    return values[: rows * classes].reshape(rows, classes), values[rows * classes :].reshape(rows, classes)


def test_binary_links_libtorch_without_python(run_model_binary: Path) -> None:
    ldd = subprocess.run(["ldd", str(run_model_binary)], capture_output=True, text=True, check=True, env=BARE_ENV)
    libraries = ldd.stdout
    print(libraries)
    assert "not found" not in libraries, libraries
    for needed in ("libtorch.so", "libtorch_cpu.so", "libc10.so"):
        assert f"{needed} => {torch_dir() / 'lib'}" in libraries, f"{needed} not resolved from pip torch:\n{libraries}"
    assert "libpython" not in libraries, libraries
    assert "libtorch_python" not in libraries, libraries
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(run_model_binary)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [symbol for symbol in undefined if symbol.startswith(("Py", "_Py"))]


@pytest.fixture(scope="module")
def gpu_form_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GPU targets' form of the module (matrix-product convolutions, a scripted chunk loop),
    in fp32: what the libtorch backend loads, traced here as `export --target gpu` traces it."""
    path = tmp_path_factory.mktemp("gpu-form") / "model.pt"
    trace(load_pretrained(str(tiny_model_dir)), SAMPLE_RATE, conv_form=conv_form_for("gpu")).save(str(path))
    return path


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_libtorch_output_matches_python(
    run_model_binary: Path, target: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if target == "cpu":
        model_path = request.getfixturevalue("tiny_repository") / "classifier" / "1" / "model.pt"
    else:
        model_path = request.getfixturevalue("gpu_form_model")
    waveform, ends = ragged_batch()
    input_path, output_path = tmp_path / "input.bin", tmp_path / "output.bin"
    write_input(input_path, waveform, ends)

    started = time.perf_counter()
    ran = subprocess.run(
        [str(run_model_binary), str(model_path), str(input_path), str(output_path)],
        check=False,
        capture_output=True,
        text=True,
        env=BARE_ENV,
        timeout=300,
    )
    elapsed = time.perf_counter() - started
    assert ran.returncode == 0, f"run_model exited {ran.returncode}:\n{ran.stderr}"
    cpp_logits, cpp_probabilities = read_output(output_path)

    module = torch.jit.load(str(model_path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            py_logits, py_probabilities, _ = module(torch.from_numpy(waveform), torch.from_numpy(ends))
    finally:
        torch.set_num_threads(threads)
    py_logits, py_probabilities = py_logits.numpy(), py_probabilities.numpy()

    assert cpp_logits.shape == py_logits.shape == (len(CLIP_SECONDS), 4)
    assert np.isfinite(cpp_logits).all() and np.isfinite(cpp_probabilities).all()
    np.testing.assert_allclose(cpp_probabilities.sum(axis=1), 1.0, atol=1e-5)
    # Each clip got its own answer: the ragged ends were honoured, not one clip broadcast.
    assert np.abs(cpp_logits[:, None, :] - cpp_logits[None, :, :]).max(axis=2)[np.triu_indices(3, 1)].min() > 0
    logits_delta = float(np.abs(cpp_logits - py_logits).max())
    probabilities_delta = float(np.abs(cpp_probabilities - py_probabilities).max())
    logit_scale = float(np.abs(py_logits).max())
    print(
        f"\nlibtorch run of {len(CLIP_SECONDS)} clips ({ends[-1]} samples) took {elapsed:.2f} s; "
        f"max |Δ| vs Python: logits {logits_delta:.3e} (max |logit| {logit_scale:.3e}), "
        f"probabilities {probabilities_delta:.3e}"
    )
    assert logits_delta <= TOLERANCE
    assert probabilities_delta <= TOLERANCE
    assert logits_delta <= RELATIVE_TOLERANCE * logit_scale


def test_missing_model_fails_with_message(run_model_binary: Path, tmp_path: Path) -> None:
    waveform, ends = ragged_batch()
    input_path = tmp_path / "input.bin"
    write_input(input_path, waveform, ends)
    missing = tmp_path / "no-such-model.pt"
    output_path = tmp_path / "output.bin"
    ran = subprocess.run(
        [str(run_model_binary), str(missing), str(input_path), str(output_path)],
        check=False,
        capture_output=True,
        text=True,
        env=BARE_ENV,
    )
    assert ran.returncode != 0
    assert str(missing) in ran.stderr, ran.stderr
    assert not output_path.exists()


def test_bad_usage_and_truncated_input_fail(run_model_binary: Path, tmp_path: Path) -> None:
    usage = subprocess.run([str(run_model_binary)], check=False, capture_output=True, text=True, env=BARE_ENV)
    assert usage.returncode == 2
    assert "usage:" in usage.stderr

    waveform, ends = ragged_batch()
    truncated = tmp_path / "truncated.bin"
    write_input(truncated, waveform, ends)
    truncated.write_bytes(truncated.read_bytes()[:-4])
    ran = subprocess.run(
        [str(run_model_binary), "unused.pt", str(truncated), str(tmp_path / "out.bin")],
        check=False,
        capture_output=True,
        text=True,
        env=BARE_ENV,
    )
    assert ran.returncode == 2
    assert "truncated" in ran.stderr, ran.stderr
    assert not os.path.exists(tmp_path / "out.bin")
