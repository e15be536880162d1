"""What `tritonserver` 2.51 offers to lock its endpoints, as typed settings that render its flags.

- `GrpcTLS`: the gRPC endpoint speaks TLS only (`--grpc-use-ssl`), or mutual TLS when a client CA
  is given (`--grpc-use-ssl-mutual`: clients must present a certificate that CA signed). Triton's
  HTTP and metrics endpoints have no TLS at all; `serve` keeps them on loopback when TLS is on.
- `TokenAuth`: every request to the protected API groups must carry one header with one value
  (`--grpc-restricted-protocol` and `--http-restricted-api`); anything else is refused before it
  reaches a model. Health stays open by default so that load balancers and probes need no secret.
  Triton 2.51 reads the gRPC header with a prefix: key `x-emotion-token` is sent over gRPC as
  `triton-grpc-protocol-x-emotion-token` (over HTTP as `x-emotion-token`); refusals come back as
  gRPC UNAVAILABLE "This protocol is restricted, expecting header ..." and HTTP 403.

Model control is not a flag here because it is always off: the launcher runs with
`--model-control-mode=none`, so the repository API cannot load or unload models even with the token.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "API_GROUPS",
    "DEFAULT_PROTECTED_APIS",
    "DEFAULT_TOKEN_HEADER",
    "GRPC_HEADER_PREFIX",
    "GrpcTLS",
    "TokenAuth",
    "read_token",
]

API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
"""The protocol groups `--grpc-restricted-protocol` and `--http-restricted-api` accept (Triton 2.51)."""

DEFAULT_PROTECTED_APIS = tuple(group for group in API_GROUPS if group != "health")
"""Everything but liveness/readiness: inference, shared memory and the repository API named in the
issue, and also what leaks the deployment (metadata, config, statistics) or changes the server at
run time (trace and logging settings)."""

DEFAULT_TOKEN_HEADER = "x-emotion-token"
"""The header key of the token (gRPC metadata keys are lower case)."""

GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
"""What Triton 2.51's gRPC endpoint puts in front of the configured key when it looks for the header."""

_HEADER = re.compile(r"^[0-9a-z_.-]+$")
_PEM_MARKER = b"-----BEGIN "


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrpcTLS:
    """PEM files for a TLS (or, with `client_ca`, mutual-TLS) gRPC endpoint; checked when created."""

    certificate: Path
    """The server's certificate chain; its subject alternative names must match the host clients dial."""
    private_key: Path
    """The key of `certificate`. Readable by the server process only, ideally."""
    client_ca: Path | None = None
    """CA whose signature a client certificate must carry; None: any client may connect (TLS, not mTLS)."""

    def __post_init__(self) -> None:
        for name in ("certificate", "private_key", "client_ca"):
            path = getattr(self, name)
            if path is not None:
                object.__setattr__(self, name, _pem_file(name, Path(path)))

    def server_args(self) -> list[str]:
        if self.client_ca is None:
            return [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={self.certificate}",
                f"--grpc-server-key={self.private_key}",
            ]
        return [
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={self.certificate}",
            f"--grpc-server-key={self.private_key}",
            f"--grpc-root-cert={self.client_ca}",
        ]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TokenAuth:
    """One shared secret that every request to `apis` must carry in the header `header`.

    The token reaches tritonserver on its command line (2.51 has no other way), so local users who
    can list processes can read it: run the server in its own container or user. Its `repr` hides it.
    """

    token: str = dataclasses.field(repr=False)
    header: str = DEFAULT_TOKEN_HEADER
    apis: tuple[str, ...] = DEFAULT_PROTECTED_APIS

    def __post_init__(self) -> None:
        if not self.token or any(not (" " <= ch <= "~") for ch in self.token) or self.token != self.token.strip():
            raise ValueError(
                "the auth token must be non-empty printable ASCII without leading or trailing spaces "
                "(e.g. `openssl rand -hex 32`)"
            )
        if not _HEADER.match(self.header) or self.header.startswith("grpc-") or self.header.endswith("-bin"):
            raise ValueError(
                f"auth header {self.header!r} is not a plain gRPC metadata key: use lower-case letters, digits, "
                "'_', '.', '-', not starting with 'grpc-' nor ending in '-bin'"
            )
        unknown = sorted(set(self.apis) - set(API_GROUPS))
        if unknown or not self.apis:
            raise ValueError(f"apis must be a non-empty subset of {', '.join(API_GROUPS)}; unknown: {unknown}")
        object.__setattr__(self, "apis", tuple(group for group in API_GROUPS if group in self.apis))

    @property
    def grpc_headers(self) -> Mapping[str, str]:
        """What a gRPC client sends: `EmotionClient(..., headers=auth.grpc_headers)`."""
        return {GRPC_HEADER_PREFIX + self.header: self.token}

    @property
    def http_headers(self) -> Mapping[str, str]:
        """What an HTTP client sends (the key as configured, no prefix)."""
        return {self.header: self.token}

    def server_args(self) -> list[str]:
        rule = f"{','.join(self.apis)}:{self.header}={self.token}"
        return [f"--grpc-restricted-protocol={rule}", f"--http-restricted-api={rule}"]


def read_token(path: Path) -> str:
    """The first line of `path`, stripped: how `serve --auth-token-file` keeps the token out of shell history."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the auth token from {path}: {error}") from error
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"{path} holds no token (its first line is empty)")
    return token


def _pem_file(name: str, path: Path) -> Path:
    try:
        head = path.read_bytes()[:65536]
    except OSError as error:
        raise ValueError(f"TLS {name.replace('_', ' ')} {path}: {error.strerror or error}") from error
    if _PEM_MARKER not in head:
        raise ValueError(f"TLS {name.replace('_', ' ')} {path} is not a PEM file (no '-----BEGIN' line)")
    return path.resolve()
