"""Run the real `tritonserver` binary that the `nvidia-pytriton` wheel ships, without Docker.

The wheel's binary cannot run from site-packages as is: its Python backend needs a stub built for
the running interpreter inside a writable `backends/` tree, its shared libraries sit in
`nvidia_pytriton.libs`, and the stub finds the venv's packages only through `PATH`. This module
does that preparation once per user, launches the server in its own process group, waits for
real readiness, and guarantees that neither the server nor its stub processes outlive us.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING

from .description import CLASSIFIER_MODEL, PROVENANCE_FILE, Provenance
from .libtorch_backend import HOW_TO_BUILD
from .security import GrpcTLS, TokenAuth
from .server_memory import GRPC_MEMORY_ARGS, find_jemalloc, memory_environment, stub_environment_file
from .triton_models.cpu_features import cpu_flags, emulation_warning

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "PYTRITON_REQUIREMENT",
    "STUB_DIED_STATUS",
    "Endpoints",
    "ServerError",
    "ServerStartError",
    "StubEnvironmentError",
    "StubProcess",
    "TritonInstall",
    "TritonNotFoundError",
    "TritonServer",
    "find_tritonserver",
    "free_port",
    "serve",
]

_LOGGER = logging.getLogger(__name__)

PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
"""The wheel whose tritonserver this module knows how to prepare; named in every install error."""

_TRITON_VERSION_BY_PYTRITON: Mapping[str, str] = {"0.7.0": "2.51.0"}
"""The binary reports no version before it runs, so the wheel's version stands in for it."""

_STUB_NAME = "triton_python_backend_stub"
_STUB_INSTANCE_ARG = 8
"""Position of the instance name ("classifier_0_0") on the 2.51 stub's command line."""
_STUB_SHM_ARG = 2
"""Position of the stub's shared-memory region name on its command line."""
_SHM_DIR = Path("/dev/shm")
_PYTHON_BACKEND_LIBRARY = "libtriton_python.so"
_LOG_TAIL_LINES = 40
_ERROR_LINES = 20
_ERROR_LINE_CHARS = 1000
_ERROR_LINE = re.compile(r"^E\d{4} |^error: ")
"""Triton's glog error prefix (E + month + day) and its final fatal message."""
_BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)
"""Logged on every CPU-only host; it would crowd out the error that explains a failed start."""
_READY_POLL_INTERVAL_S = 0.1
_HTTP_PROBE_TIMEOUT_S = 2.0
_SERVER_EXIT_TIMEOUT_S = 20
"""tritonserver's own wait for in-flight requests; below stop()'s default so we rarely SIGKILL."""
_STRAGGLER_GRACE_S = 5.0
"""Stubs notice a dead server within about a second and then free their shared memory themselves."""
_FAILED_START_STOP_TIMEOUT_S = 10.0
_STUB_WATCH_INTERVAL_S = 0.5
STUB_DIED_STATUS = 3
"""`serve`'s exit status when a Python-backend stub died and it stopped the server (see `serve`)."""
_PORT_ATTEMPTS = 3
_PORT_CONFLICT_MARKERS = ("already in use", "Address in use")
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"  # 1: PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('tritonserver not started: its parent had already exited')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""Exec'd in front of the server so Linux SIGTERMs it when we die, even by SIGKILL where atexit
cannot run. A throwaway interpreter rather than preexec_fn, which can deadlock a threaded parent.
The death signal follows the forking thread, so it is only armed from the main thread."""


class ServerError(RuntimeError):
    """Root of every error this module raises about the server itself."""


class TritonNotFoundError(ServerError):
    """The wheel, its binary or the stub for this Python is missing; the message says what to install."""


class StubEnvironmentError(ServerError):
    """This environment has a package the Python-backend stub cannot work with; the message says which."""


class ServerStartError(ServerError):
    """tritonserver exited or never became ready; the server has already been stopped."""

    def __init__(self, message: str, *, exit_code: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        """The server's exit status (negative: killed by that signal); None if we never saw it exit."""
        self.log_tail = log_tail
        """The last lines of the server's output, or "" when its output went to our stderr."""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a running server answers; `host` is an address clients can connect to."""

    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    http_host: str | None = None
    """Where HTTP and metrics answer when that differs from `host` (they stay on loopback under TLS)."""

    @property
    def grpc_url(self) -> str:
        """`host:port`, the form tritonclient.grpc expects (no scheme)."""
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.http_host or self.host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.http_host or self.host)}:{self.metrics_port}/metrics"


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
    stub = dist_dir / "python_backend_stubs" / python_version / _STUB_NAME
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


def free_port() -> int:
    """A TCP port free on every interface right now; not reserved, so a later bind can still lose."""
    return _free_ports(1)[0]


class TritonServer:
    """One tritonserver process on a model repository; a context manager that starts and stops it.

    The server runs in its own process group (its Python stubs join that group), so a Ctrl-C in
    the terminal reaches only us and we decide what the server gets; stop() then sweeps the
    group so no stub survives. Ports left as None are picked free at start(), which retries on a
    lost port race.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        log_file: Path | None = None,
        log_to_stderr: bool = False,
        extra_args: Sequence[str] = (),
        install: TritonInstall | None = None,
        tls: GrpcTLS | None = None,
        auth: TokenAuth | None = None,
        http_host: str | None = None,
        memory_bounds: bool = True,
    ) -> None:
        """`log_file` None keeps the output in a temporary file (read back into memory and deleted at
        stop); `log_to_stderr` sends it straight to our stderr instead, for an operator watching
        live, at the price of no log tail in errors. `extra_args` go last so they can override.

        `tls` makes gRPC TLS-only; `auth` requires its header on every protected API of gRPC and
        HTTP (our own readiness probes send it). `http_host` binds HTTP and metrics elsewhere than
        `host`; both have no TLS in Triton, so keep them on loopback when gRPC is exposed with TLS.
        `memory_bounds` (server_memory.py) gives back what a request used once it is answered;
        False launches Triton's defaults, for measuring what they keep."""
        if log_file is not None and log_to_stderr:
            raise ValueError("log_file and log_to_stderr are exclusive: the output goes to one place")
        self._model_repository = Path(model_repository)
        self._requested_ports = (grpc_port, http_port, metrics_port)
        self._host = host
        self._http_host = http_host
        self._tls = tls
        self._auth = auth
        self._log_verbose = log_verbose
        self._log_to_stderr = log_to_stderr
        self._extra_args = tuple(extra_args)
        self._install = install
        self._log_path: Path | None = log_file
        self._owns_log = False
        self._saved_log: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._endpoints: Endpoints | None = None
        self._exit_code: int | None = None
        self._shm_regions: tuple[str, ...] = ()
        self._memory_bounds = memory_bounds

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise RuntimeError("the server has not been started")
        return self._endpoints

    @property
    def pid(self) -> int | None:
        """The tritonserver pid, also its process group id; None before start()."""
        return None if self._process is None else self._process.pid

    @property
    def install(self) -> TritonInstall:
        """The installation this server runs (found and prepared on first use)."""
        if self._install is None:
            self._install = find_tritonserver()
        return self._install

    @property
    def tls(self) -> GrpcTLS | None:
        return self._tls

    @property
    def auth(self) -> TokenAuth | None:
        return self._auth

    @property
    def auth_summary(self) -> str:
        """What a client must send, without the secret: for logs and the `serve` banner."""
        if self._auth is None:
            return "none (every API open)"
        (grpc_header,) = self._auth.grpc_headers
        return (
            f"token required for {', '.join(self._auth.apis)} "
            f"(gRPC header '{grpc_header}', HTTP header '{self._auth.header}')"
        )

    @property
    def auth_headers(self) -> Mapping[str, str]:
        """The HTTP header a request needs under `auth` (empty without auth); gRPC: `auth.grpc_headers`."""
        return {} if self._auth is None else self._auth.http_headers

    def python_stubs(self) -> tuple[StubProcess, ...]:
        """The live Python-backend stubs of this server, by pid; empty once it has stopped."""
        if not self.running:
            return ()
        stubs = []
        for pid in _process_group_members(self._require_process().pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(os.fsdecode(argv[0])).name == _STUB_NAME and len(argv) > _STUB_INSTANCE_ARG:
                region = os.fsdecode(argv[_STUB_SHM_ARG])
                stubs.append(StubProcess(pid, os.fsdecode(argv[_STUB_INSTANCE_ARG]), region))
        return tuple(sorted(stubs, key=lambda stub: stub.pid))

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        """Everything the server wrote so far ("" when its output goes to our stderr)."""
        if self._saved_log is not None:
            return self._saved_log
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    def start(self, *, ready_timeout_s: float = 180.0) -> Endpoints:
        """Launch and block until /v2/health/ready answers 200 (all models loaded, given
        --strict-readiness); on exit or timeout the server is stopped and ServerStartError raised."""
        if self._process is not None:
            raise RuntimeError("this TritonServer was already started; create a new one to run again")
        if not self._model_repository.is_dir():
            raise FileNotFoundError(f"model repository {self._model_repository} is not a directory")
        install = self.install
        picks_ports = all(port is None for port in self._requested_ports)
        attempts = _PORT_ATTEMPTS if picks_ports else 1
        deadline = time.monotonic() + ready_timeout_s
        for attempt in range(1, attempts + 1):
            if self._owns_log or (self._log_path is None and not self._log_to_stderr):
                self._log_path, self._owns_log = _temporary_log(), True
                self._saved_log = None
            self._launch(install)
            try:
                self._wait_until_ready(deadline, ready_timeout_s)
            except ServerStartError as error:
                lost_port_race = any(marker in error.log_tail for marker in _PORT_CONFLICT_MARKERS)
                if attempt == attempts or not lost_port_race or time.monotonic() >= deadline:
                    raise
                _LOGGER.info("tritonserver lost a race for its ports; retrying on new ones")
                self._process, self._endpoints, self._exit_code = None, None, None
                continue
            except BaseException:  # e.g. KeyboardInterrupt: __exit__ will not run, so stop it here
                self._shutdown(self._require_process(), signal.SIGTERM, _FAILED_START_STOP_TIMEOUT_S)
                raise
            self._shm_regions = tuple(stub.shm_region for stub in self.python_stubs())
            _LOGGER.info("tritonserver %s ready (pid %d) at %s", install.version, self.pid, self.endpoints)
            return self.endpoints
        raise AssertionError("unreachable: the last attempt returns or raises")

    def ready_models(self) -> tuple[str, ...]:
        """Names of the models the running server reports READY, sorted."""
        request = urllib.request.Request(
            f"{self.endpoints.http_url}/v2/repository/index",
            data=json.dumps({"ready": True}).encode(),
            headers={"Content-Type": "application/json", **self.auth_headers},
            method="POST",
        )
        with _NO_PROXY_OPENER.open(request, timeout=_HTTP_PROBE_TIMEOUT_S) as response:
            index = json.loads(response.read())
        return tuple(sorted({entry["name"] for entry in index if entry.get("state") == "READY"}))

    def stop(self, *, timeout_s: float = 30.0) -> int:
        """Ask the server to shut down (SIGTERM: unload models, end stubs), SIGKILL it after
        `timeout_s`, then sweep its process group. Idempotent: returns the same exit status again."""
        process = self._require_process()
        if self._exit_code is not None:
            return self._exit_code
        return self._shutdown(process, signal.SIGTERM, timeout_s)

    def wait(self) -> int:
        """Block until the server exits by itself or by a signal someone sent it; its exit status."""
        process = self._require_process()
        if self._exit_code is None:
            process.wait()
            self._finish(process)
        assert self._exit_code is not None
        return self._exit_code

    def poll(self, *, timeout_s: float = 0.0) -> int | None:
        """Like wait(), but give up after `timeout_s` and return None if the server still runs."""
        process = self._require_process()
        if self._exit_code is None:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return None
            self._finish(process)
        return self._exit_code

    def _signal(self, signum: int) -> None:
        """Signal the server unless it has already been reaped (its pid may then be someone else's).

        Safe inside a signal handler: it never takes the Popen lock that wait() holds."""
        process = self._process
        if process is None or self._exit_code is not None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)

    def _require_process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the server has not been started")
        return self._process

    def _launch(self, install: TritonInstall) -> None:
        requested = self._requested_ports
        fresh = iter(_free_ports(sum(port is None for port in requested)))
        grpc_port, http_port, metrics_port = (next(fresh) if port is None else port for port in requested)
        http_bind = self._host if self._http_host is None else self._http_host
        http_host = None if http_bind == self._host else _connect_host(http_bind)
        self._endpoints = Endpoints(_connect_host(self._host), grpc_port, http_port, metrics_port, http_host)
        command = [
            str(install.binary),
            f"--model-repository={self._model_repository.resolve()}",
            f"--backend-directory={install.backends_dir}",
            f"--grpc-address={self._host}",
            f"--grpc-port={grpc_port}",
            f"--http-address={http_bind}",
            f"--http-port={http_port}",
            f"--metrics-address={http_bind}",
            f"--metrics-port={metrics_port}",
            f"--log-verbose={self._log_verbose}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={_SERVER_EXIT_TIMEOUT_S}",
            "--model-control-mode=none",
        ]
        if self._tls is not None:
            command.extend(self._tls.server_args())
        if self._auth is not None:
            command.extend(self._auth.server_args())
        if install.caches_dir is not None:
            command.append(f"--cache-directory={install.caches_dir}")
        if self._memory_bounds:
            command.extend(GRPC_MEMORY_ARGS)
        command.extend(self._extra_args)
        shown = " ".join(command)
        if self._auth is not None:
            shown = shown.replace(self._auth.token, "<token>")
        _LOGGER.debug("launching %s", shown)
        if _in_main_thread():
            command = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
        output: IO[bytes] | int | None
        with contextlib.ExitStack() as stack:
            if self._log_to_stderr:
                output = sys.stderr.fileno() if _has_fileno(sys.stderr) else None
            else:
                assert self._log_path is not None
                output = stack.enter_context(self._log_path.open("wb"))
            self._process = subprocess.Popen(
                command,
                env=self._environment(install),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING.add(self)

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        env = _server_environment(install, os.environ)
        if not self._memory_bounds:
            return env
        jemalloc = find_jemalloc()
        if jemalloc is None:
            _LOGGER.warning(
                "jemalloc is not installed (Debian: apt-get install libjemalloc2): tritonserver keeps what "
                "large requests' gRPC buffers freed (docs/hardening.md, 'Oversized requests')"
            )
            return env
        return memory_environment(
            env, jemalloc=jemalloc, stub_environment=stub_environment_file(install.backends_dir.parent)
        )

    def _wait_until_ready(self, deadline: float, ready_timeout_s: float) -> None:
        process = self._require_process()
        ready_url = f"{self.endpoints.http_url}/v2/health/ready"
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                self._finish(process)
                raise self._start_error(f"tritonserver exited with status {exit_code} before it was ready")
            if _answers_200(ready_url, self.auth_headers):
                return
            if time.monotonic() >= deadline:
                self._shutdown(process, signal.SIGTERM, _FAILED_START_STOP_TIMEOUT_S)
                raise self._start_error(f"tritonserver was not ready after {ready_timeout_s:g} s; stopped it")
            time.sleep(_READY_POLL_INTERVAL_S)

    def _start_error(self, headline: str) -> ServerStartError:
        if self._log_to_stderr:
            return ServerStartError(
                f"{headline}; its output is above on stderr", exit_code=self._exit_code, log_tail=""
            )
        all_lines = self.log_text().splitlines()
        tail_lines = deque(all_lines, maxlen=_LOG_TAIL_LINES)
        tail = "\n".join(tail_lines)
        # Status tables can push the one line that matters out of the tail, so errors come first.
        errors = [
            line[:_ERROR_LINE_CHARS]
            for line in all_lines
            if _ERROR_LINE.match(line) and not any(noise in line for noise in _BENIGN_ERRORS)
        ][-_ERROR_LINES:]
        parts = [headline + "."]
        if errors:
            parts += ["Errors it logged:", *errors]
        parts += [f"Last {len(tail_lines)} lines of its log:", tail]
        return ServerStartError("\n".join(parts), exit_code=self._exit_code, log_tail=tail)

    def _shutdown(self, process: subprocess.Popen[bytes], signum: int, timeout_s: float) -> int:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _LOGGER.warning(
                    "tritonserver (pid %d) ignored %s for %g s; killing it",
                    process.pid,
                    signal.Signals(signum).name,
                    timeout_s,
                )
                process.kill()
                process.wait()
        return self._finish(process)

    def _finish(self, process: subprocess.Popen[bytes]) -> int:
        """Bookkeeping once the server has exited: sweep its group, keep the log, forget the process."""
        _sweep_process_group(process.pid)
        _remove_shared_memory(self._shm_regions)
        exit_code = process.returncode
        self._exit_code = exit_code
        if self._owns_log and self._log_path is not None and self._saved_log is None:
            self._saved_log = self.log_text()
            self._log_path.unlink(missing_ok=True)
        _RUNNING.discard(self)
        if exit_code != 0:
            _LOGGER.info("tritonserver (pid %d) exited with status %d", process.pid, exit_code)
        return exit_code


def serve(
    model_repository: Path,
    *,
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    host: str = "127.0.0.1",
    log_verbose: int = 0,
    ready_timeout_s: float = 180.0,
    extra_args: Sequence[str] = (),
    install: TritonInstall | None = None,
    tls: GrpcTLS | None = None,
    auth: TokenAuth | None = None,
    http_host: str | None = None,
) -> int:
    """Run tritonserver in the foreground until SIGINT/SIGTERM; returns a shell-style exit status.

    The server's output goes to our stderr and the endpoint summary to stdout. The first SIGINT or
    SIGTERM is forwarded once (the server sits in its own process group, so a terminal Ctrl-C does
    not reach it twice) and we wait for a clean shutdown; a second one kills it. Loopback by
    default: pass host="0.0.0.0" to expose the server. With `tls`, HTTP and metrics (which have
    no TLS in Triton) stay on 127.0.0.1 unless `http_host` says otherwise.

    A watchdog covers what Triton 2.51 does not: when a Python-backend stub dies (OOM killer, a
    crash in native code), Triton neither restarts it nor stops reporting ready, and every request
    to that model fails from then on. serve() then stops the server and returns STUB_DIED_STATUS,
    so that its supervisor (docker's restart policy, systemd, Kubernetes) starts a fresh one.
    """
    if not _in_main_thread():
        raise RuntimeError("serve() installs signal handlers and must run in the main thread")
    if tls is not None and http_host is None:
        http_host = "127.0.0.1"
    server = TritonServer(
        model_repository,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        host=host,
        log_verbose=log_verbose,
        log_to_stderr=True,
        extra_args=extra_args,
        install=install,
        tls=tls,
        auth=auth,
        http_host=http_host,
    )
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) == 1:
            print(
                f"\n{signal.Signals(signum).name}: stopping tritonserver (again to kill it)",
                file=sys.stderr,
                flush=True,
            )
            server._signal(signum)
        else:
            print(f"\n{signal.Signals(signum).name} again: killing tritonserver", file=sys.stderr, flush=True)
            server._signal(signal.SIGKILL)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            endpoints = server.start(ready_timeout_s=ready_timeout_s)
        except ServerStartError as error:
            if received:
                return _shell_status(server.wait())
            print(f"error: {error}", file=sys.stderr, flush=True)
            return _shell_status(error.exit_code if error.exit_code is not None else 1)
        if received:  # a signal that came before the pid existed
            return _shell_status(server.stop())
        print(_summary(server, endpoints, host, model_repository), flush=True)
        _warn_about_precision(model_repository)
        stubs = server.python_stubs()
        while (exit_code := server.poll(timeout_s=_STUB_WATCH_INTERVAL_S)) is None:
            alive = {stub.pid for stub in server.python_stubs()}
            dead = [stub for stub in stubs if stub.pid not in alive]
            if dead and not received:
                names = ", ".join(f"{stub.instance} (pid {stub.pid})" for stub in dead)
                print(
                    f"error: the Python-backend stub of {names} died. tritonserver {server.install.version} neither "
                    "restarts it nor stops reporting ready, so every request to that model would fail from now on "
                    "(triton-inference-server/server#8604); stopping the server so that its supervisor restarts it",
                    file=sys.stderr,
                    flush=True,
                )
                server.stop()
                return STUB_DIED_STATUS
        return _shell_status(exit_code)
    finally:
        if server.pid is not None:
            server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _provenance(model_repository: Path) -> Provenance | None:
    record = model_repository / CLASSIFIER_MODEL / "1" / PROVENANCE_FILE
    return Provenance.from_json(record.read_text()) if record.is_file() else None


def _warn_about_precision(model_repository: Path) -> None:
    provenance = _provenance(model_repository)
    warning = None if provenance is None else emulation_warning(provenance.dtype, cpu_flags())
    if warning is not None:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)


def _summary(server: TritonServer, endpoints: Endpoints, bind_host: str, model_repository: Path) -> str:
    models = ", ".join(server.ready_models()) or "(none)"
    provenance = _provenance(model_repository)
    weights = "unknown (no export.json)" if provenance is None else provenance.dtype
    if provenance is not None and provenance.precision_choice:
        weights += f" ({provenance.precision_choice})"
    return "\n".join(
        [
            f"tritonserver {server.install.version} ready (pid {server.pid}), models: {models}",
            f"  weights  {weights}",
            f"  gRPC     {endpoints.grpc_url}{' (TLS)' if server.tls else ''}",
            f"  HTTP     {endpoints.http_url}",
            f"  metrics  {endpoints.metrics_url}",
            f"  auth     {server.auth_summary}",
            f"listening on {bind_host}; Ctrl-C stops the server",
        ]
    )


def _shell_status(exit_code: int) -> int:
    """Popen reports death by signal N as -N; shells and sys.exit expect 128 + N."""
    return 128 - exit_code if exit_code < 0 else exit_code


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


def _temporary_log() -> Path:
    handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
    os.close(handle)
    return Path(name)


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
        shutil.copy2(stub, fresh / "python" / _STUB_NAME)
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
        (target / "python" / _STUB_NAME, stub),
    )
    try:
        return all(copy.stat().st_size == original.stat().st_size for copy, original in pairs) and os.access(
            target / "python" / _STUB_NAME, os.X_OK
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


def _server_environment(install: TritonInstall, base: Mapping[str, str]) -> dict[str, str]:
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


def _free_ports(count: int) -> tuple[int, ...]:
    """Hold all sockets open together so that the ports returned are distinct."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("", 0))
        return tuple(int(sock.getsockname()[1]) for sock in sockets)


def _connect_host(bind_host: str) -> str:
    """A server bound to every interface is reached through loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Health probes go to the server itself, never through an http_proxy from the environment."""


def _answers_200(url: str, headers: Mapping[str, str]) -> bool:
    try:
        with _NO_PROXY_OPENER.open(
            urllib.request.Request(url, headers=dict(headers)), timeout=_HTTP_PROBE_TIMEOUT_S
        ) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False


def _has_fileno(stream: IO[str]) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _process_group_members(pgid: int) -> list[int]:
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


def _remove_shared_memory(regions: Sequence[str]) -> None:
    """Unlink the stubs' regions that a killed server left in /dev/shm (a clean exit leaves none).

    Only called once every process of the server's group is gone, and the names carry a UUID, so
    nobody else can still be using them."""
    for name in regions:
        if not name.startswith("triton_python_backend_shm_region_") or "/" in name:
            continue
        with contextlib.suppress(FileNotFoundError):
            (_SHM_DIR / name).unlink()
            _LOGGER.info("removed shared memory %s left behind by tritonserver", name)


def _sweep_process_group(pgid: int) -> None:
    """Give the stubs of an exited server a moment to notice and clean up, then kill what is left."""
    deadline = time.monotonic() + _STRAGGLER_GRACE_S
    while _process_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = _process_group_members(pgid)
    if leftovers:
        _LOGGER.warning("killing processes left behind by tritonserver: %s", leftovers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


_RUNNING: set[TritonServer] = set()
"""Servers started and not yet stopped, held strongly so that the exit hook can always reach them."""


@atexit.register
def _stop_servers_left_running() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout_s=_FAILED_START_STOP_TIMEOUT_S)
