"""Launch one tritonserver process on a model repository and control it: start it in its own process
group, wait for real readiness, stop it, and guarantee that neither the server nor its stubs
outlive us.

What it runs comes from install.py (the wheel's binary, prepared backends, environment),
what watches its processes from processes.py, where it answers from endpoints.py, what
its log says when it fails to start from log.py.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from .endpoints import HTTP_PROBE_TIMEOUT_S, NO_PROXY_OPENER, Endpoints, answers_200, connect_host, free_ports
from .errors import ServerStartError
from .install import TritonInstall, find_tritonserver, server_environment
from .log import start_failure, temporary_log
from .memory import GRPC_MEMORY_ARGS, find_jemalloc, memory_environment, stub_environment_file
from .processes import StubProcess, python_stubs, remove_shared_memory, sweep_process_group
from .security import GrpcTLS, TokenAuth

if TYPE_CHECKING:
    from typing import Self

__all__ = ["TritonServer", "in_main_thread"]

_LOGGER = logging.getLogger(__name__)

_READY_POLL_INTERVAL_S = 0.1
_SERVER_EXIT_TIMEOUT_S = 20
"""tritonserver's own wait for in-flight requests; below stop()'s default so we rarely SIGKILL."""
_FAILED_START_STOP_TIMEOUT_S = 10.0
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
        `memory_bounds` (memory.py) gives back what a request used once it is answered;
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
    def model_repository(self) -> Path:
        return self._model_repository

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
        return python_stubs(self._require_process().pid)

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
                self._log_path, self._owns_log = temporary_log(), True
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
        with NO_PROXY_OPENER.open(request, timeout=HTTP_PROBE_TIMEOUT_S) as response:
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
        fresh = iter(free_ports(sum(port is None for port in requested)))
        grpc_port, http_port, metrics_port = (next(fresh) if port is None else port for port in requested)
        http_bind = self._host if self._http_host is None else self._http_host
        http_host = None if http_bind == self._host else connect_host(http_bind)
        self._endpoints = Endpoints(connect_host(self._host), grpc_port, http_port, metrics_port, http_host)
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
        if in_main_thread():
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
        env = server_environment(install, os.environ)
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
            if answers_200(ready_url, self.auth_headers):
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
        message, tail = start_failure(headline, self.log_text())
        return ServerStartError(message, exit_code=self._exit_code, log_tail=tail)

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
        sweep_process_group(process.pid)
        remove_shared_memory(self._shm_regions)
        exit_code = process.returncode
        self._exit_code = exit_code
        if self._owns_log and self._log_path is not None and self._saved_log is None:
            self._saved_log = self.log_text()
            self._log_path.unlink(missing_ok=True)
        _RUNNING.discard(self)
        if exit_code != 0:
            _LOGGER.info("tritonserver (pid %d) exited with status %d", process.pid, exit_code)
        return exit_code


def _has_fileno(stream: IO[str]) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_RUNNING: set[TritonServer] = set()
"""Servers started and not yet stopped, held strongly so that the exit hook can always reach them."""


@atexit.register
def _stop_servers_left_running() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout_s=_FAILED_START_STOP_TIMEOUT_S)
