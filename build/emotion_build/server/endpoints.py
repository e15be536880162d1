"""Where a tritonserver answers: its addresses and ports, free ports to start one on, and the
HTTP probe that tells whether it answers yet."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping

__all__ = [
    "HTTP_PROBE_TIMEOUT_S",
    "NO_PROXY_OPENER",
    "Endpoints",
    "answers_200",
    "connect_host",
    "free_port",
    "free_ports",
]

HTTP_PROBE_TIMEOUT_S = 2.0


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


def free_port() -> int:
    """A TCP port free on every interface right now; not reserved, so a later bind can still lose."""
    return free_ports(1)[0]


def free_ports(count: int) -> tuple[int, ...]:
    """Hold all sockets open together so that the ports returned are distinct."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("", 0))
        return tuple(int(sock.getsockname()[1]) for sock in sockets)


def connect_host(bind_host: str) -> str:
    """A server bound to every interface is reached through loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Health probes go to the server itself, never through an http_proxy from the environment."""


def answers_200(url: str, headers: Mapping[str, str]) -> bool:
    try:
        with NO_PROXY_OPENER.open(
            urllib.request.Request(url, headers=dict(headers)), timeout=HTTP_PROBE_TIMEOUT_S
        ) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False
