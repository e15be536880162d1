"""Triton's own libtorch backend, built from source by `make libtorch-backend`, serving the gpu target.

The shared tests (end to end, batching, bad input, TLS and token) run against it through `served`;
these check what is its own: the build and where it comes from, how `serve` and `find_tritonserver`
find it, that it answers exactly what `model.pt` answers in Python, and its warmup at load.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from triton_probes import ServeProcess, classifier_runtime, clip, model_counts, raw_client, tensor

from emotion_build.cli import main as cli_main
from emotion_build.repository.description import CLASSIFIER_OUTPUTS, BatchingSettings
from emotion_build.server.endpoints import free_port
from emotion_build.server.errors import TritonNotFoundError
from emotion_build.server.install import find_tritonserver
from emotion_build.server.launcher import TritonServer
from emotion_build.server.libtorch_backend import (
    BUILD_INFO,
    RELEASE,
    SOURCE_COMMITS,
    BackendBuildError,
    check_backend,
    fetch_sources,
)
from emotion_build.triton_models.waveform import normalise


def needed(library: Path) -> list[str]:
    return subprocess.run(["patchelf", "--print-needed", str(library)], capture_output=True, text=True).stdout.split()


def test_the_backend_is_built_from_r24_10_against_this_torch_and_the_wheels_core(libtorch_backends: Path) -> None:
    build = check_backend(libtorch_backends)
    assert (build.release, build.torch_version) == (RELEASE, torch.__version__)
    assert dict(build.commits) == dict(SOURCE_COMMITS)
    library = libtorch_backends / "pytorch" / "libtriton_pytorch.so"
    python_backend = find_tritonserver().backends_dir / "python" / "libtriton_python.so"
    core = [name for name in needed(python_backend) if name.startswith("libtritonserver")]
    assert [name for name in needed(library) if name.startswith("libtritonserver")] == core != ["libtritonserver.so"]
    assert not [name for name in needed(library) if "python" in name]
    runpath = subprocess.run(["patchelf", "--print-rpath", str(library)], capture_output=True, text=True).stdout
    assert runpath.strip() == "${ORIGIN}"
    for name in ("libtorch.so", "libtorch_cpu.so", "libc10.so", "libtorch_global_deps.so"):
        link = library.parent / name
        assert link.is_symlink() and link.resolve() == (Path(torch.__file__).parent / "lib" / name).resolve()


def fake_trees(root: Path) -> Path:
    for name in SOURCE_COMMITS:
        (root / name).mkdir(parents=True)
        (root / name / "LICENSE").write_text(name)
    return root


def test_sources_come_from_the_archive_when_it_is_there(tmp_path: Path) -> None:
    trees = fake_trees(tmp_path / "triton-sources")
    (trees / "COMMITS").write_text("".join(f"{name} {commit}\n" for name, commit in SOURCE_COMMITS.items()))
    archive = tmp_path / "sources.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(trees, arcname="triton-sources")
    root, build = fetch_sources(archive, tmp_path / "unpacked", github="file:///nowhere")
    assert (root / "pytorch_backend" / "LICENSE").read_text() == "pytorch_backend"
    assert dict(build.commits) == dict(SOURCE_COMMITS) and build.sources == str(archive)


def test_without_the_archive_the_release_branches_are_cloned(tmp_path: Path) -> None:
    github = tmp_path / "github"
    for name in SOURCE_COMMITS:
        work = tmp_path / "work" / name
        work.mkdir(parents=True)
        (work / "LICENSE").write_text(name)
        git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git[:3], "init", "-q", "-b", RELEASE], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", name], check=True)
        subprocess.run(["git", "clone", "-q", "--bare", str(work), str(github / f"{name}.git")], check=True)
    notes: list[str] = []
    root, build = fetch_sources(
        tmp_path / "absent.tar.gz", tmp_path / "cloned", github=f"file://{github}", progress=notes.append
    )
    assert all((root / name / "LICENSE").read_text() == name for name in SOURCE_COMMITS)
    assert build.sources == f"file://{github}" and set(build.commits) == set(SOURCE_COMMITS)
    assert notes[0].startswith(f"no source archive at {tmp_path / 'absent.tar.gz'}: cloning the {RELEASE} branches")
    assert any("not e97a90061f" in note for note in notes), "a commit other than the tested one must be reported"


def test_with_neither_archive_nor_github_the_error_says_what_to_provide(tmp_path: Path) -> None:
    with pytest.raises(BackendBuildError) as caught:
        fetch_sources(tmp_path / "absent.tar.gz", tmp_path / "cloned", github=f"file://{tmp_path}/no-github")
    message = str(caught.value)
    for part in (
        f"no source archive at {tmp_path / 'absent.tar.gz'}",
        "cloning file://",
        "triton-r24.10-sources.tar.gz",
    ):
        assert part in message, message


def test_a_missing_or_stale_build_is_refused_with_the_way_to_rebuild(libtorch_backends: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendBuildError, match=r"holds no libtorch backend.*make libtorch-backend"):
        check_backend(tmp_path)
    stale = tmp_path / "stale"
    (stale / "pytorch").mkdir(parents=True)
    (stale / "pytorch" / "libtriton_pytorch.so").touch()
    info = json.loads((libtorch_backends / "pytorch" / BUILD_INFO).read_text())
    (stale / "pytorch" / BUILD_INFO).write_text(json.dumps({**info, "torch_version": "1.0.0"}))
    with pytest.raises(
        BackendBuildError, match=rf"built against torch 1\.0\.0, this environment has {re.escape(torch.__version__)}"
    ):
        check_backend(stale)


def test_find_tritonserver_serves_the_extra_backends_beside_python(libtorch_backends: Path, tmp_path: Path) -> None:
    plain = find_tritonserver()
    joined = find_tritonserver(extra_backends=libtorch_backends)
    assert joined.backends_dir != plain.backends_dir
    assert (joined.backends_dir / "python").readlink() == plain.backends_dir / "python"
    assert (joined.backends_dir / "pytorch").readlink() == libtorch_backends.resolve() / "pytorch"
    assert find_tritonserver(extra_backends=libtorch_backends) == joined  # made once, then found
    with pytest.raises(TritonNotFoundError, match="holds no Triton backend besides python"):
        find_tritonserver(extra_backends=tmp_path)


def test_the_libtorch_classifier_answers_exactly_what_model_pt_answers_in_python(
    libtorch_triton: TritonServer, libtorch_repository: Path
) -> None:
    """One request of three equal-length clips and single clips of other lengths, against the
    file called in Python; the gpu target's model.pt is the matmul-convolution form."""
    url = libtorch_triton.endpoints.grpc_url
    assert classifier_runtime(url) == "libtorch"
    module = torch.jit.load(str(libtorch_repository / "classifier" / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((3, 12000)), *(rng.standard_normal((1, n)) for n in (400, 7001, 64000))]
    worst = 0.0
    for batch in batches:
        waveform = np.stack([normalise(row.astype(np.float32), do_normalize=True) for row in batch])
        response = raw_client(url).infer("classifier", [tensor(waveform, name="waveform")], client_timeout=60)
        ends = torch.tensor(np.cumsum([row.size for row in waveform]), dtype=torch.int32)
        with torch.no_grad():
            expected = module(torch.from_numpy(waveform.reshape(-1)), ends)
        for name, python in zip(CLASSIFIER_OUTPUTS, expected, strict=True):
            served = response.as_numpy(name)
            assert served.shape == tuple(python.shape), name
            worst = max(worst, float(np.abs(served - python.numpy()).max()))
    print(f"\nlibtorch backend vs model.pt in Python: max |Δ| {worst:.2e} over logits, probabilities, embedding")
    assert worst <= 1e-5


def test_serve_runs_the_libtorch_backend_from_backends_dir_and_warms_it_up(
    libtorch_repository: Path, libtorch_backends: Path, tmp_path: Path
) -> None:
    """Started as an operator would; the classifier's statistics before any request are its warmup."""
    grpc, http, metrics = free_port(), free_port(), free_port()
    args = ["--model-repository", str(libtorch_repository), "--backends-dir", str(libtorch_backends)]
    ports = ["--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics)]
    serve = ServeProcess([*args, *ports], tmp_path / "serve.log").start()
    try:
        url = f"127.0.0.1:{grpc}"
        warmup = model_counts(url, "classifier")
        runs = BatchingSettings().warmup_count  # the test repository runs one classifier instance
        assert (warmup.executions, warmup.successes, warmup.failures) == (runs, runs, 0)
        assert classifier_runtime(url) == "libtorch"
        assert raw_client(url).infer("emotion", [tensor(clip(1.0))]).as_numpy("probabilities").shape == (1, 4)
    finally:
        serve.stop()
    assert "TRITONBACKEND_Initialize: pytorch" in serve.log()
    assert "skipping model configuration auto-complete" not in serve.log()


def test_serve_refuses_a_backends_dir_without_the_backend(
    libtorch_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["serve", "--model-repository", str(libtorch_repository), "--backends-dir", str(tmp_path)]) == 2
    assert f"{tmp_path} holds no libtorch backend" in capsys.readouterr().err
