"""`python -m emotion_build serve`: one tritonserver in the foreground, with signals forwarded, a
summary of where it answers, and a watchdog for what Triton 2.51 does not watch itself."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from ..repository.description import PROVENANCE_FILE, ModelNames, Provenance
from ..repository.layout import emotion_models, served_versions, versions
from ..triton_models.cpu_features import cpu_flags, emulation_warning
from .endpoints import Endpoints
from .errors import ServerStartError
from .install import TritonInstall
from .launcher import TritonServer, in_main_thread
from .processes import StubProcess
from .security import GrpcTLS, TokenAuth

__all__ = ["STUB_DIED_STATUS", "lost_stubs", "serve"]

_STUB_WATCH_INTERVAL_S = 0.5
STUB_DIED_STATUS = 3
"""`serve`'s exit status when a Python-backend stub died and it stopped the server (see `serve`)."""


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
    if not in_main_thread():
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
            now = server.python_stubs()
            dead = lost_stubs(stubs, now, lambda: set(server.ready_models()))
            stubs = now
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


def lost_stubs(
    before: Sequence[StubProcess], now: Sequence[StubProcess], ready_models: Callable[[], set[str]]
) -> list[StubProcess]:
    """The stubs that died under a model still serving. A stub replaced by a reload (its instance alive
    under a new pid) or gone with its model (unloaded) is not lost; the server is asked only when a
    stub has gone."""
    alive = {stub.pid for stub in now}
    instances = {stub.instance for stub in now}
    gone = [stub for stub in before if stub.pid not in alive and stub.instance not in instances]
    if not gone:
        return []
    try:
        ready = ready_models()
    except OSError:  # the server itself is going: its exit status says why
        return []
    return [stub for stub in gone if stub.model in ready]


def _served(model_repository: Path) -> list[tuple[ModelNames, int, Provenance | None]]:
    """Each checkpoint in the repository with the version it serves and that version's export record."""
    served = []
    for names in emotion_models(model_repository).values():
        for version in served_versions(model_repository, names) or (1,):
            record = model_repository / names.classifier / str(version) / PROVENANCE_FILE
            served.append((names, version, Provenance.from_json(record.read_text()) if record.is_file() else None))
    return served


def _warn_about_precision(model_repository: Path) -> None:
    for names, _, provenance in _served(model_repository):
        warning = None if provenance is None else emulation_warning(provenance.dtype, cpu_flags())
        if warning is not None:
            print(f"WARNING: model '{names.ensemble}': {warning}", file=sys.stderr, flush=True)


def _model_line(model_repository: Path, names: ModelNames, version: int, provenance: Provenance | None) -> str:
    """`  model    NAME v2 of 1, 2: wavlm, labels a b c, int8+bfloat16 on openvino (auto: ...)`."""
    all_versions = ", ".join(map(str, versions(model_repository / names.classifier)))
    line = f"  model    {names.ensemble} v{version} (of {all_versions})"
    if provenance is None:
        return f"{line}: no export.json"
    description = provenance.description or {}
    labels = description.get("labels", ())
    family = description.get("family") or "?"
    untrained = ", UNTRAINED" if provenance.untrained else ""
    choice = f" ({provenance.precision_choice})" if provenance.precision_choice else ""
    labelled = " ".join(map(str, labels)) if isinstance(labels, (list, tuple)) else "?"
    return f"{line}: {family}, labels {labelled}, {provenance.dtype} on {provenance.engine}{untrained}{choice}"


def _summary(server: TritonServer, endpoints: Endpoints, bind_host: str, model_repository: Path) -> str:
    models = ", ".join(server.ready_models()) or "(none)"
    lines = [_model_line(model_repository, *served) for served in _served(model_repository)]
    return "\n".join(
        [
            f"tritonserver {server.install.version} ready (pid {server.pid}), models: {models}",
            *lines,
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
