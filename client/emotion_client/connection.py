"""How a client reaches its servers: endpoints, TLS, extra headers and gRPC channel options.

Pure validation shared by both clients, so a typo in a URL, header or certificate path fails at
construction with a message that says what to fix, not at the first request with a gRPC error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._defaults import MAX_GRPC_MESSAGE_BYTES

__all__ = ["TLSConfig", "channel_args", "normalize_headers", "parse_urls", "tls_client_kwargs"]

_HEADER_KEY = re.compile(r"^[0-9a-z_.-]+$")
"""gRPC metadata keys: lower-case letters, digits, ``_ . -`` (HTTP/2 rejects upper case)."""
_RESERVED_HEADER_PREFIX = "grpc-"
_PEM_MARKER = b"-----BEGIN "


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """TLS settings of the gRPC channel; ``TLSConfig()`` trusts the system's root certificates.

    For mutual TLS give both ``client_certificate`` and ``client_key``. Files are PEM and are read
    when the client is created, so a wrong path fails there.
    """

    root_certificates: str | os.PathLike[str] | None = None
    """PEM file with the CA certificate(s) that signed the server's certificate; ``None``: system roots."""
    client_certificate: str | os.PathLike[str] | None = None
    """PEM certificate chain this client presents to a server that requires mutual TLS."""
    client_key: str | os.PathLike[str] | None = None
    """PEM private key of ``client_certificate``."""

    def __post_init__(self) -> None:
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both client_certificate and client_key, or neither")
        for name in ("root_certificates", "client_certificate", "client_key"):
            path = getattr(self, name)
            if path is not None:
                _check_pem_file(name, path)


def _check_pem_file(name: str, path: str | os.PathLike[str]) -> None:
    file = Path(path)
    try:
        head = file.read_bytes()[:4096]
    except OSError as e:
        raise ValueError(f"TLSConfig.{name}: cannot read '{file}': {e.strerror or e}") from e
    if _PEM_MARKER not in head:
        raise ValueError(f"TLSConfig.{name}: '{file}' is not a PEM file (no '-----BEGIN' line)")


def parse_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """Endpoints as ``host:port`` strings from one URL, a comma-separated list, or a sequence of either.

    Order is kept (requests go round-robin in that order) and repeats are kept (a repeated URL
    gets a larger share). A ``grpc://`` or ``http://`` prefix is refused rather than guessed at.
    """
    parts = [url] if isinstance(url, str) else list(url)
    if not all(isinstance(part, str) for part in parts):
        raise TypeError(f"url must be a string or a sequence of strings, got {url!r}")
    urls = tuple(piece.strip() for part in parts for piece in part.split(",") if piece.strip())
    if not urls:
        raise ValueError(f"no endpoint given: url={url!r}; pass 'host:port' (e.g. 'localhost:8001')")
    for endpoint in urls:
        if "://" in endpoint:
            raise ValueError(
                f"endpoint '{endpoint}' has a scheme; give 'host:port' (gRPC, e.g. 'localhost:8001') "
                "and use tls=TLSConfig(...) for TLS"
            )
        if any(ch.isspace() for ch in endpoint) or "/" in endpoint:
            raise ValueError(f"endpoint '{endpoint}' is not of the form 'host:port'")
    return urls


def normalize_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Validate extra request headers (gRPC metadata) and lower-case their names.

    gRPC refuses upper-case or binary (``-bin``) keys at call time with an unhelpful error; this
    says which header is wrong when the client is created.
    """
    if headers is None:
        return {}
    normalized: dict[str, str] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"header names and values must be strings, got {key!r}: {value!r}")
        name = key.strip().lower()
        if not _HEADER_KEY.match(name):
            raise ValueError(
                f"header name {key!r} is not a valid gRPC metadata key (letters, digits, '_', '.', '-')"
            )
        if name.startswith(_RESERVED_HEADER_PREFIX) or name.endswith("-bin"):
            raise ValueError(f"header name {key!r} is reserved by gRPC or binary; use a plain text header")
        if any(not (" " <= ch <= "~") for ch in value):
            raise ValueError(f"header {name!r} has a value with characters outside printable ASCII")
        normalized[name] = value
    return normalized


def channel_args() -> list[tuple[str, Any]]:
    """Options of every gRPC channel the clients open.

    tritonclient's own defaults (no message size limit, its keepalive settings), plus the
    ``round_robin`` load-balancing policy: a single URL whose name resolves to several replicas
    (e.g. a Kubernetes headless service) is then spread over all of them, not pinned to the first.
    """
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 2**31 - 1),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", False),
        ("grpc.http2.max_pings_without_data", 2),
        ("grpc.lb_policy_name", "round_robin"),
    ]


def tls_client_kwargs(tls: TLSConfig | bool | None) -> dict[str, Any]:
    """Keyword arguments for tritonclient's ``InferenceServerClient`` for the given TLS setting."""
    if tls is None or tls is False:
        return {"ssl": False}
    config = TLSConfig() if tls is True else tls
    if not isinstance(config, TLSConfig):
        raise TypeError(f"tls must be a TLSConfig, True (system roots) or None, got {tls!r}")

    def path(value: str | os.PathLike[str] | None) -> str | None:
        return None if value is None else os.fspath(value)

    return {
        "ssl": True,
        "root_certificates": path(config.root_certificates),
        "certificate_chain": path(config.client_certificate),
        "private_key": path(config.client_key),
    }
