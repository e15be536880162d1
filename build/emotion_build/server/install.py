"""What tritonserver is given to run: the `nvidia-pytriton` wheel's binary, a writable backends tree
with the Python-backend stub for this interpreter, the libraries it loads and the environment the
stub needs.

The wheel's binary cannot run from site-packages as is: its Python backend needs a stub built for
the running interpreter inside a writable `backends/` tree, its shared libraries sit in
`nvidia_pytriton.libs`, and the stub finds the venv's packages only through `PATH`. This module
does that preparation once per user (launcher.py launches the result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from .errors import HOW_TO_BUILD, ServerError, StubEnvironmentError, TritonNotFoundError

__all__ = ["PYTRITON_REQUIREMENT", "STUB_NAME", "TritonInstall", "find_tritonserver", "server_environment"]

_LOGGER = logging.getLogger(__name__)

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
"""The wheel whose tritonserver this module knows how to prepare; named in every install error."""

_TRITON_VERSION_BY_PYTRITON: Mapping[str, str] = {"0.7.0": "2.51.0"}
"""The binary reports no version before it runs, so the wheel's version stands in for it."""

STUB_NAME = "triton_python_backend_stub"
_PYTHON_BACKEND_LIBRARY = "libtriton_python.so"


@dataclasses.dataclass(frozen=True, slots=True)
class TritonInstall:
    """A tritonserver ready to launch: prepared backends plus what the loader needs to find."""

    binary: Path
    backends_dir: Path
    """A writable copy of the wheel's backends with the stub for this interpreter in `python/`."""
    library_path: tuple[Path, ...]
    """Prepended to LD_LIBRARY_PATH: the wheel's bundled libraries, then this Python's libdir."""
    version: str
    """Triton's release (e.g. "2.51.0"), or "pytriton-<v>" for a wheel this module does not know."""
    caches_dir: Path | None = None
    """The wheel's response-cache plugins, so `--cache-config` in extra_args works."""


def find_tritonserver(*, cache_dir: Path | None = None, extra_backends: Path | None = None) -> TritonInstall:
    """Locate the wheel's tritonserver and prepare its backends under `cache_dir`.

    Raises TritonNotFoundError when the wheel, binary or stub is missing, StubEnvironmentError
    when this environment's NumPy is one the stub cannot use.

    `cache_dir` defaults to `$XDG_CACHE_HOME/emotion-build` (else `~/.cache/emotion-build`); the
    backends land in `<cache_dir>/tritonserver-<version>-py<major.minor>/backends`, keyed on the
    Python version because the stub embeds one libpython. Preparing is idempotent and safe when
    several processes race: each copies into a private directory and renames it into place.

    `extra_backends` is a directory of more backends (`<name>/libtriton_<name>.so`, e.g. the libtorch
    one that `python -m emotion_build build-backend` builds): Triton takes one backend directory, so
    the server then gets a sibling of the prepared one that links the Python backend and those.
    """
    package_dir = _locate_pytriton()
    if package_dir is None:
        raise TritonNotFoundError(
            f"tritonserver is not installed in {sys.prefix}: `pip install {PYTRITON_REQUIREMENT}` "
            "(it ships the server binary this module runs)"
        )
    dist_dir = package_dir / "tritonserver"
    binary = dist_dir / "bin" / "tritonserver"
    libs_dir = package_dir.parent / "nvidia_pytriton.libs"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist_dir / "python_backend_stubs" / python_version / STUB_NAME
    for required in (binary, dist_dir / "backends" / "python" / _PYTHON_BACKEND_LIBRARY, libs_dir):
        if not required.exists():
            raise TritonNotFoundError(
                f"{required} is missing from the pytriton installation at {package_dir}; "
                f"reinstall with `pip install --force-reinstall {PYTRITON_REQUIREMENT}`"
            )
    if not stub.is_file():
        shipped = sorted(p.name for p in (dist_dir / "python_backend_stubs").iterdir() if p.is_dir())
        raise TritonNotFoundError(
            f"the pytriton wheel has no Python backend stub for Python {python_version} "
            f"(it ships {', '.join(shipped)}); recreate the venv with one of those and "
            f"`pip install {PYTRITON_REQUIREMENT}`"
        )
    version = _triton_version()
    _check_stub_numpy(version)
    root = (cache_dir if cache_dir is not None else _default_cache_dir()) / (
        f"tritonserver-{version}-py{python_version}"
    )
    backends_dir = _prepare_backends(dist_dir / "backends", stub, root)
    if extra_backends is not None:
        backends_dir = _join_backends(backends_dir, extra_backends)
    library_path = [libs_dir]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        library_path.append(Path(libdir))
    caches_dir = dist_dir / "caches"
    return TritonInstall(
        binary=binary,
        backends_dir=backends_dir,
        library_path=tuple(library_path),
        version=version,
        caches_dir=caches_dir if caches_dir.is_dir() else None,
    )


def _locate_pytriton() -> Path | None:
    """Find the package without importing it: pytriton's import pulls in far more than we need."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_NUMPY1_STUBS = frozenset({"2.51.0"})
"""Releases whose Python-backend stub was built against NumPy 1 (pybind11 before NumPy 2 support)."""


def _check_stub_numpy(version: str) -> None:
    """The 2.51 stub reads a NumPy 2 array's element size at NumPy 1's struct offset and gets 0, so
    every tensor a Python model returns reaches the server with 0 bytes: the ensemble then fails
    each request with "input byte size mismatch ... got 0". Measured on a GPU machine whose image
    had NumPy 2.5 (docs/benchmarks.md, GPU). The stub imports this interpreter's venv, not
    PYTHONPATH, so this venv's NumPy is the one to check."""
    if version not in _NUMPY1_STUBS:
        return
    try:
        numpy_version = importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return
    if int(numpy_version.split(".", 1)[0]) >= 2:
        raise StubEnvironmentError(
            f"numpy {numpy_version} is installed in {sys.prefix}, but the Python-backend stub of tritonserver "
            f"{version} was built for NumPy 1: every tensor its models return would arrive empty. "
            "Install `numpy<2` in this environment (pip install 'emotion-build[serve]' pins it)."
        )


def _triton_version() -> str:
    try:
        pytriton_version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    known = _TRITON_VERSION_BY_PYTRITON.get(pytriton_version)
    if known is None:
        _LOGGER.warning("nvidia-pytriton %s is untested here; %s is", pytriton_version, PYTRITON_REQUIREMENT)
        return f"pytriton-{pytriton_version}"
    return known


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "emotion-build"


def _prepare_backends(source: Path, stub: Path, root: Path) -> Path:
    """Copy the wheel's backends plus the stub into `root/backends`, unless a complete copy is there.

    A copy only ever appears under its final name by an atomic rename of a finished private copy,
    so readers never see half a tree; a stale or damaged copy is moved aside and replaced.
    """
    target = root / "backends"
    if _backends_complete(target, source, stub):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        fresh = staging / "backends"
        shutil.copytree(source, fresh, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, fresh / "python" / STUB_NAME)
        for _ in range(3):
            try:
                os.rename(fresh, target)
            except OSError:
                if _backends_complete(target, source, stub):
                    break  # another process won the race with an equally good copy
                with contextlib.suppress(FileNotFoundError):
                    os.rename(target, staging / f"stale-{time.monotonic_ns()}")
                continue
            _LOGGER.info("prepared tritonserver backends in %s", target)
            break
        if not _backends_complete(target, source, stub):
            raise ServerError(f"could not prepare tritonserver backends in {target}; remove it and retry")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _backends_complete(target: Path, source: Path, stub: Path) -> bool:
    pairs = (
        (target / "python" / _PYTHON_BACKEND_LIBRARY, source / "python" / _PYTHON_BACKEND_LIBRARY),
        (target / "python" / STUB_NAME, stub),
    )
    try:
        return all(copy.stat().st_size == original.stat().st_size for copy, original in pairs) and os.access(
            target / "python" / STUB_NAME, os.X_OK
        )
    except FileNotFoundError:
        return False


def _join_backends(prepared: Path, extra: Path) -> Path:
    """`backends-<digest of extra>` beside `prepared`: links to its python/ and to each backend in `extra`.

    Made like the prepared copy (a private directory renamed into place), and rebuilt when the set of
    backends in `extra` has changed."""
    extra = extra.resolve()
    found = extra.iterdir() if extra.is_dir() else iter(())
    names = sorted(p.name for p in found if (p / f"libtriton_{p.name}.so").is_file())
    if not names or "python" in names:
        raise TritonNotFoundError(
            f"{extra} holds no Triton backend besides python (<name>/libtriton_<name>.so); the libtorch one: "
            f"{HOW_TO_BUILD}"
        )
    links = {"python": prepared / "python", **{name: extra / name for name in names}}
    joined = prepared.with_name(f"backends-{hashlib.sha256(str(extra).encode()).hexdigest()[:16]}")

    def complete() -> bool:
        return {p.name: p.readlink() for p in joined.iterdir() if p.is_symlink()} == links if joined.is_dir() else False

    if complete():
        return joined
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=prepared.parent))
    try:
        fresh = staging / "backends"
        fresh.mkdir()
        for name, target in links.items():
            (fresh / name).symlink_to(target)
        with contextlib.suppress(FileNotFoundError):
            os.rename(joined, staging / "stale")
        with contextlib.suppress(OSError):  # another process may have put an equal one in place meanwhile
            os.rename(fresh, joined)
        if not complete():
            raise ServerError(f"could not link tritonserver backends in {joined}; remove it and retry")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return joined


def server_environment(install: TritonInstall, base: Mapping[str, str]) -> dict[str, str]:
    """The venv's bin/ goes first on PATH because the stub's embedded Python finds its prefix,
    hence the venv's pyvenv.cfg and site-packages, through the first `python3` on PATH. The
    directory is sys.executable's own, unresolved: resolving the venv's symlink would lead to
    the base interpreter. The libdir on LD_LIBRARY_PATH is where the stub finds libpython."""
    env = dict(base)
    library_path = [str(path) for path in install.library_path]
    if base.get("LD_LIBRARY_PATH"):
        library_path.append(base["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH") or os.defpath])
    return env
