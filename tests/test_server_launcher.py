"""The tritonserver launcher against the real pip-shipped binary: a Python-backend identity model
served and queried over gRPC, a broken model failing fast, clean shutdown of `serve()` on SIGINT,
and no server or stub process left behind by any of them.

Other people may run tritonservers on this machine at the same time, so every check on leftover
processes is scoped to the pids and process group of the server the test started.
"""

from __future__ import annotations

import importlib.metadata
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from emotion_build.cli import main as cli_main
from emotion_build.server import endpoints
from emotion_build.server import install as triton_install
from emotion_build.server import launcher as server_module
from emotion_build.server.endpoints import Endpoints, free_port
from emotion_build.server.errors import ServerStartError, StubEnvironmentError, TritonNotFoundError
from emotion_build.server.install import PYTRITON_REQUIREMENT, TritonInstall, find_tritonserver
from emotion_build.server.launcher import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]
BROKEN_TEXT = "deliberately broken by test_server_launcher"

_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

_IDENTITY_MODEL = """\
import json
import sys
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # Which interpreter prefix the stub runs in: proves PATH led it to our venv.
        Path(args["model_repository"], "stub_prefix.txt").write_text(sys.prefix)

    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", tensor)]))
        return responses
"""

_BROKEN_MODEL = f"""\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("{BROKEN_TEXT}")

    def execute(self, requests):
        return []
"""

_SLOW_MODEL = """\
import time


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(600)

    def execute(self, requests):
        return []
"""


def _write_model(repository: Path, name: str, model_py: str) -> Path:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(_CONFIG.format(name=name))
    (repository / name / "1" / "model.py").write_text(model_py)
    return repository


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process, None if it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
    return state, int(ppid), int(pgrp)


def _alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _group_members(pgid: int) -> list[int]:
    return [pid for pid in _all_pids() if (stat := _proc_stat(pid)) and stat[0] != "Z" and stat[2] == pgid]


def _stub_children(server_pid: int) -> list[int]:
    stubs = []
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is None or stat[1] != server_pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"triton_python_backend_stub" in cmdline:
            stubs.append(pid)
    return stubs


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def install(cache_root: Path) -> TritonInstall:
    return find_tritonserver(cache_dir=cache_root)


@pytest.fixture
def identity_repository(tmp_path: Path) -> Path:
    return _write_model(tmp_path / "repository", "identity", _IDENTITY_MODEL)


@pytest.fixture
def running(identity_repository: Path, install: TritonInstall) -> Iterator[TritonServer]:
    with TritonServer(identity_repository, install=install) as server:
        yield server


def test_endpoint_urls() -> None:
    endpoints = Endpoints("127.0.0.1", 8001, 8000, 8002)
    assert endpoints.grpc_url == "127.0.0.1:8001"
    assert endpoints.http_url == "http://127.0.0.1:8000"
    assert endpoints.metrics_url == "http://127.0.0.1:8002/metrics"
    assert Endpoints("::1", 1, 2, 3).grpc_url == "[::1]:1"


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("", port))


def test_install_prepares_backends_with_the_stub(install: TritonInstall) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert install.version == "2.51.0"
    assert install.binary.is_file() and os.access(install.binary, os.X_OK)
    assert install.backends_dir.parent.name == f"tritonserver-2.51.0-py{version}"
    stub = install.backends_dir / "python" / "triton_python_backend_stub"
    assert os.access(stub, os.X_OK)
    assert (install.backends_dir / "python" / "libtriton_python.so").is_file()
    assert install.library_path[0].name == "nvidia_pytriton.libs"


def test_concurrent_preparation_yields_one_complete_copy(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        installs = list(pool.map(lambda _: find_tritonserver(cache_dir=tmp_path), range(4)))
    assert len({result.backends_dir for result in installs}) == 1
    root = installs[0].backends_dir.parent
    assert [entry.name for entry in root.iterdir()] == ["backends"]  # no staging dirs left behind


def test_damaged_copy_is_replaced(tmp_path: Path) -> None:
    stub = find_tritonserver(cache_dir=tmp_path).backends_dir / "python" / "triton_python_backend_stub"
    stub.write_bytes(b"truncated")
    repaired = find_tritonserver(cache_dir=tmp_path)
    assert (repaired.backends_dir / "python" / "triton_python_backend_stub").stat().st_size > 1000


def test_missing_wheel_names_the_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_install, "_locate_pytriton", lambda: None)
    with pytest.raises(TritonNotFoundError, match=re.escape(f"pip install {PYTRITON_REQUIREMENT}")):
        find_tritonserver()


def test_numpy_2_is_refused_before_the_stub_sends_empty_tensors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.1.3" if name == "numpy" else real_version(name))
    with pytest.raises(StubEnvironmentError, match=re.escape("numpy<2")) as raised:
        find_tritonserver(cache_dir=tmp_path)
    assert "numpy 2.1.3" in str(raised.value)
    assert sys.prefix in str(raised.value)
    # `serve` says the same in one line instead of a traceback.
    repository = tmp_path / "repository"
    (repository / "emotion").mkdir(parents=True)
    (repository / "emotion" / "config.pbtxt").write_text(
        'name: "emotion"\nplatform: "ensemble"\nparameters { key: "labels" value { string_value: "[]" } }\n'
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cli_main(["serve", "--model-repository", str(repository)]) == 2
    assert "error: numpy 2.1.3 is installed" in capsys.readouterr().err


def test_identity_inference_then_clean_stop(running: TritonServer, identity_repository: Path) -> None:
    server_pid = running.pid
    assert server_pid is not None
    stubs = _stub_children(server_pid)
    assert stubs, "the python backend should have spawned a stub"
    assert running.ready_models() == ("identity",)

    data = np.arange(16, dtype=np.float32) / 3
    with grpcclient.InferenceServerClient(running.endpoints.grpc_url) as client:
        request = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        request.set_data_from_numpy(data)
        result = client.infer("identity", [request], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert (identity_repository / "identity" / "stub_prefix.txt").read_text() == sys.prefix

    assert running.stop() == 0
    assert running.stop() == 0  # idempotent
    assert not _alive(server_pid)
    assert not any(_alive(pid) for pid in stubs)
    assert _group_members(server_pid) == []
    assert "successfully loaded 'identity'" in running.log_text()


def test_environment_reaches_the_server(running: TritonServer, install: TritonInstall) -> None:
    raw = Path(f"/proc/{running.pid}/environ").read_text().split("\0")
    environ = dict(item.split("=", 1) for item in raw if "=" in item)
    library_path = environ["LD_LIBRARY_PATH"].split(os.pathsep)
    assert library_path[: len(install.library_path)] == [str(path) for path in install.library_path]
    assert environ["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_broken_model_fails_start_fast_with_its_error(tmp_path: Path, install: TritonInstall) -> None:
    repository = _write_model(tmp_path / "repository", "broken", _BROKEN_MODEL)
    server = TritonServer(repository, install=install)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=BROKEN_TEXT) as caught:
        server.start(ready_timeout_s=60)
    assert time.monotonic() - started < 30
    assert caught.value.exit_code not in (None, 0)
    assert BROKEN_TEXT in caught.value.log_tail
    assert server.pid is not None and not _alive(server.pid)
    assert _group_members(server.pid) == []
    assert server.stop() == caught.value.exit_code


def test_ready_timeout_stops_the_server(tmp_path: Path, install: TritonInstall) -> None:
    repository = _write_model(tmp_path / "repository", "slow", _SLOW_MODEL)
    server = TritonServer(repository, install=install)
    with pytest.raises(ServerStartError, match="not ready after 2 s"):
        server.start(ready_timeout_s=2)
    assert server.pid is not None and not _alive(server.pid)
    assert _group_members(server.pid) == []


def test_lost_port_race_is_retried(
    identity_repository: Path, install: TritonInstall, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_ports = endpoints.free_ports
    with socket.socket() as squatter:
        squatter.bind(("", 0))
        squatter.listen()
        taken = int(squatter.getsockname()[1])
        picks = iter([(taken, *real_free_ports(2))])
        # server.py's own name for it: the launcher picks its ports through that one
        monkeypatch.setattr(server_module, "free_ports", lambda count: next(picks, None) or real_free_ports(count))
        with TritonServer(identity_repository, install=install) as server:
            assert server.endpoints.grpc_port != taken
            assert server.ready_models() == ("identity",)


def _serve_process(
    repository: Path, cache_root: Path, ports: tuple[int, int, int], log: IO[str]
) -> subprocess.Popen[str]:
    """`serve()` in a child of its own session, like a command started from a terminal."""
    code = textwrap.dedent("""\
        import sys
        from pathlib import Path
        from emotion_build.server.serve import serve
        grpc, http, metrics = map(int, sys.argv[2:5])
        sys.exit(serve(Path(sys.argv[1]), grpc_port=grpc, http_port=http, metrics_port=metrics))
    """)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "build"), os.environ.get("PYTHONPATH")])),
        "XDG_CACHE_HOME": str(cache_root),
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, str(repository), *map(str, ports)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,
    )


def _read_summary(process: subprocess.Popen[str], timeout_s: float) -> list[str]:
    """The endpoint summary lines serve() prints once ready, ending with the metrics URL."""
    stdout = process.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    summary: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not any("metrics" in line for line in summary):
        summary.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
    return summary


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-to-foreground-group", "sigterm-to-pid"],
)
def test_serve_stops_cleanly_on_signal(
    identity_repository: Path, cache_root: Path, tmp_path: Path, signum: signal.Signals, to_group: bool
) -> None:
    """A terminal's Ctrl-C signals the whole foreground group; the server must see it once, from us."""
    ports = (free_port(), free_port(), free_port())
    log = tmp_path / "serve.log"
    repository = identity_repository
    with log.open("w") as log_file, _serve_process(repository, cache_root, ports, log_file) as process:
        try:
            summary = "".join(_read_summary(process, timeout_s=120))
            match = re.search(r"\(pid (\d+)\), models: identity", summary)
            assert match, summary
            server_pid = int(match.group(1))
            assert f"127.0.0.1:{ports[0]}" in summary and f"http://127.0.0.1:{ports[2]}/metrics" in summary
            assert _stub_children(server_pid)

            if to_group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not _alive(server_pid)
    assert _group_members(server_pid) == []
    output = log.read_text()
    assert f"{signum.name}: stopping tritonserver" in output
    assert output.count(f"Signal ({int(signum)}) received.") == 1


def test_server_dies_with_its_parent(identity_repository: Path, install: TritonInstall, tmp_path: Path) -> None:
    """Even a SIGKILLed parent, which runs no cleanup at all, leaves no server behind: the kernel
    SIGTERMs it and it shuts down gracefully."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    code = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from emotion_build.server.launcher import TritonServer
        from emotion_build.server.install import find_tritonserver
        server = TritonServer(Path({str(identity_repository)!r}),
                              install=find_tritonserver(cache_dir=Path({str(install.backends_dir.parents[1])!r})))
        server.start()
        print(server.pid, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "TMPDIR": str(log_dir)}  # the orphaned temporary log lands here
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) as parent:
        try:
            assert parent.stdout is not None
            server_pid = int(parent.stdout.readline())
            assert _alive(server_pid)
        finally:
            parent.kill()
    assert _wait_until(lambda: not _alive(server_pid) and not _group_members(server_pid), timeout_s=40)
    (log,) = log_dir.glob("tritonserver-*.log")
    assert "Signal (15) received." in log.read_text()
