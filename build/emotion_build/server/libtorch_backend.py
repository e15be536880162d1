"""Triton's PyTorch (libtorch) backend, release r24.10, built from source against this environment's torch.

The pip tritonserver ships only the Python backend, while production serves the gpu target's
classifier with the libtorch backend of NVIDIA's container. Built here (about 40 s on two cores,
no source patch), the very same backend code runs a `--target gpu --classifier-on-cpu` repository
on a machine without a GPU or Docker: that is how `make test` loads the production path, through
`serve --backends-dir` (or `find_tritonserver(extra_backends=...)`).

The sources come from an archive of the four repositories' r24.10 trees when one is at hand (CI
cannot reach GitHub), else from shallow clones of the r24.10 branches. Two packaging details make
the built library load in the pip server: the wheel renamed its core library (the backend's
`libtritonserver.so` dependency is rewritten to the name the wheel's own Python backend links), and
`backends/pytorch/` is laid out by hand, because the `install` target copies CUDA libraries that a
CPU torch lacks. The torch libraries are linked, not copied: the backend belongs to this environment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .errors import HOW_TO_BUILD
from .install import find_tritonserver

__all__ = [
    "ARCHIVE_NAME",
    "BACKEND",
    "DEBIAN_PACKAGES",
    "GITHUB",
    "RELEASE",
    "SOURCE_COMMITS",
    "BackendBuild",
    "BackendBuildError",
    "build_backend",
    "check_backend",
    "default_backends_dir",
    "fetch_sources",
]

_LOGGER = logging.getLogger(__name__)

RELEASE = "r24.10"
"""The release of the pip tritonserver 2.51 (backend API 1.19); its pytorch_backend `src/` equals r25.02's."""
SOURCE_COMMITS: Mapping[str, str] = {
    "pytorch_backend": "e97a90061f7399b25368e2cb1f6d5c40f8cbae4e",
    "common": "578491fc3944f77d16a6a38e3d7691c485c47ba0",
    "core": "bfec7c61dc0939433f64f14e89b1973073eac8ba",
    "backend": "ac03a5d97403dec841ad46d0439e93db12c9268f",
}
"""The r24.10 heads this was built and tested from; a clone at another commit is reported, not refused."""
ARCHIVE_NAME = f"triton-{RELEASE}-sources.tar.gz"
GITHUB = "https://github.com/triton-inference-server"
BACKEND = "pytorch"
LIBRARY = f"libtriton_{BACKEND}.so"
BUILD_INFO = "emotion-build.json"
"""Written beside the library: what it was built from and against, read back by `check_backend`."""
DEBIAN_PACKAGES = ("cmake", "ninja-build", "g++", "rapidjson-dev", "googletest", "patchelf", "python3-dev")
_TOOLS = {"cmake": "cmake", "ninja": "ninja-build", "g++": "g++", "patchelf": "patchelf"}
_TORCH_LIBRARIES = ("libtorch.so", "libtorch_cpu.so", "libc10.so", "libtorch_global_deps.so")
_CLONE_TIMEOUT_S = 600.0
_GOOGLETEST = Path("/usr/src/googletest")
"""Debian's googletest sources: common's unit tests are always configured and would download it."""


class BackendBuildError(RuntimeError):
    """The backend could not be built or is unusable; the message says what to install or do."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackendBuild:
    """What a built backend directory was made from, as recorded in its BUILD_INFO file."""

    release: str
    commits: Mapping[str, str]
    sources: str
    """The archive's path, or the URL the repositories were cloned from."""
    torch_version: str


def default_backends_dir() -> Path:
    """Inside this environment: the backend links this environment's torch and goes away with it."""
    return Path(sys.prefix) / "share" / "emotion-build" / "backends"


def check_backend(backends_dir: Path) -> BackendBuild:
    """The build recorded in `backends_dir/pytorch`; BackendBuildError when it is missing or was built
    against another torch than this environment's (its libraries would no longer match)."""
    import torch  # only here: `serve` and the server's other modules stay free of torch

    library = backends_dir / BACKEND / LIBRARY
    info = backends_dir / BACKEND / BUILD_INFO
    if not library.is_file() or not info.is_file():
        raise BackendBuildError(
            f"{backends_dir} holds no libtorch backend ({BACKEND}/{LIBRARY}): build it with {HOW_TO_BUILD}"
        )
    build = BackendBuild(**json.loads(info.read_text()))
    if build.torch_version != torch.__version__:
        raise BackendBuildError(
            f"the libtorch backend in {backends_dir} was built against torch {build.torch_version}, this "
            f"environment has {torch.__version__}: rebuild it with {HOW_TO_BUILD}"
        )
    return build


def fetch_sources(
    archive: Path | None, destination: Path, *, github: str = GITHUB, progress: Callable[[str], None] = _LOGGER.info
) -> tuple[Path, BackendBuild]:
    """The four source trees under `destination`: unpacked from `archive` when it exists, else cloned
    (branch RELEASE) from `github`. The build record's torch version is filled in later."""
    if archive is not None and archive.is_file():
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
        roots = [path for path in destination.iterdir() if (path / "pytorch_backend").is_dir()]
        if len(roots) != 1:
            raise BackendBuildError(f"{archive} does not hold the {', '.join(SOURCE_COMMITS)} source trees")
        commits = _read_commits(roots[0] / "COMMITS")
        progress(f"unpacked the {RELEASE} sources from {archive}")
        return roots[0], BackendBuild(RELEASE, commits, str(archive.resolve()), "")
    where = f"no source archive at {archive}" if archive is not None else "no source archive given"
    progress(f"{where}: cloning the {RELEASE} branches of {', '.join(SOURCE_COMMITS)} from {github}")
    commits = {}
    quiet_git = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    for repository in SOURCE_COMMITS:
        url = f"{github}/{repository}.git"
        clone = ["git", "clone", "--quiet", "--depth", "1", "--branch", RELEASE, url, str(destination / repository)]
        cloned = _run(clone, env=quiet_git, check=False, timeout_s=_CLONE_TIMEOUT_S)
        if cloned.returncode != 0:
            raise BackendBuildError(
                f"{where}, and cloning {url} failed: {cloned.stderr.strip()[-500:]}. Put {ARCHIVE_NAME} (the "
                f"{RELEASE} trees of {', '.join(SOURCE_COMMITS)}) there, or build where that URL is reachable"
            )
        head = _run(["git", "-C", str(destination / repository), "rev-parse", "HEAD"]).stdout.strip()
        if head != SOURCE_COMMITS[repository]:
            progress(f"note: {repository} {RELEASE} is at {head}, not {SOURCE_COMMITS[repository]} as tested")
        commits[repository] = head
    return destination, BackendBuild(RELEASE, commits, github, "")


def build_backend(
    output: Path,
    *,
    archive: Path | None,
    github: str = GITHUB,
    jobs: int | None = None,
    progress: Callable[[str], None] = _LOGGER.info,
) -> Path:
    """Build the backend against this environment's torch into `output/pytorch`, replacing what is there
    only once the new one is complete. Returns `output`."""
    import torch  # only here: `serve` and the server's other modules stay free of torch

    missing = sorted({package for tool, package in _TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise BackendBuildError(f"building the libtorch backend needs the Debian packages {' '.join(missing)}")
    torch_dir = Path(torch.__file__).resolve().parent
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=output) as scratch:
        root, build = fetch_sources(archive, Path(scratch) / "sources", github=github, progress=progress)
        progress(f"building the {RELEASE} libtorch backend against torch {torch.__version__} at {torch_dir}")
        library = _compile(root, Path(scratch) / "build", torch_dir, jobs=jobs)
        staging = Path(scratch) / BACKEND
        _lay_out(library, root, torch_dir, staging)
        build = dataclasses.replace(build, torch_version=torch.__version__)
        (staging / BUILD_INFO).write_text(json.dumps(dataclasses.asdict(build), indent=2, sort_keys=True) + "\n")
        target = output / BACKEND
        if target.exists():
            target.rename(Path(scratch) / "replaced")
        staging.rename(target)
    check_backend(output)
    progress(f"built {target / LIBRARY}")
    return output


def _compile(root: Path, build_dir: Path, torch_dir: Path, *, jobs: int | None) -> Path:
    if not (_GOOGLETEST / "CMakeLists.txt").is_file():
        raise BackendBuildError(f"{_GOOGLETEST} is missing: install the Debian package googletest")
    include = torch_dir / "include"
    options = {
        "CMAKE_BUILD_TYPE": "Release",
        "TRITON_ENABLE_GPU": "OFF",
        "TRITON_ENABLE_NVTX": "OFF",
        "TRITON_PYTORCH_ENABLE_TORCHVISION": "OFF",
        "TRITON_PYTORCH_ENABLE_TORCHTRT": "OFF",
        "TRITON_PYTORCH_INCLUDE_PATHS": f"{include};{include / 'torch' / 'csrc' / 'api' / 'include'}",
        "TRITON_PYTORCH_LIB_PATHS": str(torch_dir / "lib"),
        "FETCHCONTENT_FULLY_DISCONNECTED": "ON",
        "FETCHCONTENT_SOURCE_DIR_REPO-COMMON": str(root / "common"),
        "FETCHCONTENT_SOURCE_DIR_REPO-CORE": str(root / "core"),
        "FETCHCONTENT_SOURCE_DIR_REPO-BACKEND": str(root / "backend"),
        "FETCHCONTENT_SOURCE_DIR_GOOGLETEST": str(_GOOGLETEST),
    }
    environment = _build_environment(os.environ)
    configure = ["cmake", "-G", "Ninja", "-S", str(root / "pytorch_backend"), "-B", str(build_dir)]
    _run([*configure, *(f"-D{key}={value}" for key, value in options.items())], env=environment, what="cmake")
    compile_command = ["cmake", "--build", str(build_dir), "--target", "triton-pytorch-backend"]
    _run([*compile_command, "-j", str(jobs or os.cpu_count() or 1)], env=environment, what="the build")
    return build_dir / LIBRARY


def _build_environment(base: Mapping[str, str]) -> dict[str, str]:
    """PATH without this environment's bin/ and pyenv's shims: through them FindPython3 finds an
    interpreter whose development headers it then misses (the system python3-dev is found instead)."""
    venv_bin = str(Path(sys.prefix) / "bin")
    entries = base.get("PATH", os.defpath).split(os.pathsep)
    kept = [entry for entry in entries if entry != venv_bin and "pyenv" not in entry]
    return {**base, "PATH": os.pathsep.join(kept)}


def _lay_out(library: Path, root: Path, torch_dir: Path, staging: Path) -> None:
    """The backend directory Triton loads: the library (its RUNPATH is $ORIGIN), the backend's model.py,
    and links to the torch libraries it and they need."""
    staging.mkdir()
    shutil.copy2(library, staging / LIBRARY)
    shutil.copy2(root / "pytorch_backend" / "src" / "model.py", staging / "model.py")
    libraries = torch_dir / "lib"
    for name in (*_TORCH_LIBRARIES, _openmp_library(libraries / "libtorch_cpu.so")):
        source = next((d / name for d in (libraries, torch_dir.parent / "torch.libs") if (d / name).is_file()), None)
        if source is None:
            raise BackendBuildError(f"torch at {torch_dir} has no {name}; reinstall torch")
        (staging / name).symlink_to(source)
    core = _wheel_core_library()
    _run(["patchelf", "--replace-needed", "libtritonserver.so", core, str(staging / LIBRARY)], what="patchelf")


def _openmp_library(torch_cpu: Path) -> str:
    needed = _run(["patchelf", "--print-needed", str(torch_cpu)], what="patchelf").stdout.split()
    openmp = [name for name in needed if name.startswith("libgomp")]
    if len(openmp) != 1:
        raise BackendBuildError(f"{torch_cpu} needs {openmp or 'no libgomp'}; expected one OpenMP library")
    return openmp[0]


def _wheel_core_library() -> str:
    """The name the pip wheel gave libtritonserver.so, as its own Python backend links it."""

    python_backend = find_tritonserver().backends_dir / "python" / "libtriton_python.so"
    needed = _run(["patchelf", "--print-needed", str(python_backend)], what="patchelf").stdout.split()
    core = [name for name in needed if name.startswith("libtritonserver")]
    if len(core) != 1:
        raise BackendBuildError(f"{python_backend} links {core or 'no libtritonserver'}; expected one core library")
    return core[0]


def _read_commits(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {name: commit for name, commit in pairs}


def _run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    what: str = "",
    check: bool = True,
    timeout_s: float | None = None,
) -> subprocess.CompletedProcess[str]:
    _LOGGER.info("running %s", " ".join(command))
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, env=None if env is None else dict(env), timeout=timeout_s
        )
    except subprocess.TimeoutExpired as error:
        raise BackendBuildError(f"{what or command[0]} took over {timeout_s:g} s: {' '.join(command)}") from error
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        shown = " ".join(command)
        raise BackendBuildError(f"{what or command[0]} failed ({result.returncode}): {shown}\n{output[-3000:]}")
    return result
