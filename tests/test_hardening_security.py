"""Security of `python -m emotion_build serve`: gRPC TLS, a token on every API but health, model
control off, HTTP and metrics kept on loopback. Certificates come from tests/certificates.py.

The server under test is started exactly as an operator would, through the CLI flags, so the flags,
`serve()` and `TritonServer` are all on the path. Refusals are checked with raw tritonclient (what
an attacker has) and, where the SDK supports it, with the SDK (what a user sees).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from certificates import Pki, make_pki
from triton_probes import RUNTIMES, ServeProcess, clip, infer, report, tensor
from tritonclient.utils import InferenceServerException

from emotion_build.cli import main
from emotion_build.server.endpoints import free_port
from emotion_build.server.launcher import TritonServer
from emotion_build.server.security import GRPC_HEADER_PREFIX, GrpcTLS, TokenAuth
from emotion_client import AuthenticationError, EmotionClient, ServerUnavailableError, TLSConfig

TOKEN = "s3cr3t-" + "0123456789abcdef" * 2
HEADER = "x-emotion-token"
GRPC_TOKEN = {GRPC_HEADER_PREFIX + HEADER: TOKEN}
RESTRICTED = f"This protocol is restricted, expecting header '{GRPC_HEADER_PREFIX}{HEADER}'"
CLIP = clip(1.0, seed=77)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "trusted")


@pytest.fixture(scope="module")
def rogue_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing the server holds."""
    return make_pki(tmp_path_factory.mktemp("rogue-pki"), "rogue").ca


@dataclass(frozen=True)
class Secured:
    grpc_url: str
    http_url: str
    summary: str
    plain: TritonServer
    """The same repository served without TLS or token, for reference answers."""
    runtime: str

    @property
    def area(self) -> str:
        """The report's area: the flags on this classifier runtime."""
        return f"security ({self.runtime})"


@pytest.fixture(scope="module", params=RUNTIMES)
def secured(pki: Pki, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Secured]:
    """`serve` with TLS and a token on either classifier runtime; the libtorch one is the repository of
    the production target, whose backend `serve` finds in this environment by itself."""
    python = request.param == "python"
    repository: Path = request.getfixturevalue("tiny_repository" if python else "libtorch_repository")
    plain: TritonServer = request.getfixturevalue("triton" if python else "libtorch_triton")
    if not python:
        request.getfixturevalue("libtorch_backends")  # built, and for this torch
    directory = tmp_path_factory.mktemp("secured")
    token_file = directory / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    grpc, http, metrics = free_port(), free_port(), free_port()
    args = [
        "--model-repository", str(repository),
        "--host", "0.0.0.0",
        "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
        "--grpc-tls-cert", str(pki.server_cert), "--grpc-tls-key", str(pki.server_key),
        "--auth-token-file", str(token_file), "--auth-header", HEADER,
    ]  # fmt: skip
    serve = ServeProcess(args, directory / "serve.log").start()
    try:
        yield Secured(f"localhost:{grpc}", f"http://127.0.0.1:{http}", serve.summary, plain, request.param)
    finally:
        serve.stop()
    assert TOKEN not in serve.summary


def tls_client(url: str, pki: Pki, *, ca: Path | None = None, with_cert: bool = False) -> Any:
    return grpcclient.InferenceServerClient(
        url,
        ssl=True,
        root_certificates=str(ca or pki.ca),
        private_key=str(pki.client_key) if with_cert else None,
        certificate_chain=str(pki.client_cert) if with_cert else None,
    )


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_serve_prints_tls_and_auth_without_the_token(secured: Secured) -> None:
    assert "(TLS)" in secured.summary
    assert f"header '{GRPC_HEADER_PREFIX}{HEADER}'" in secured.summary
    assert "http://127.0.0.1:" in secured.summary  # HTTP has no TLS: kept on loopback despite --host 0.0.0.0
    assert TOKEN not in secured.summary


def test_a_plaintext_client_is_refused_even_with_the_token(secured: Secured) -> None:
    plain = grpcclient.InferenceServerClient(secured.grpc_url)
    error = refused(lambda: plain.infer("emotion", [tensor(CLIP)], headers=GRPC_TOKEN, client_timeout=10))
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert refused(lambda: plain.is_server_live(client_timeout=10)).status() == "StatusCode.UNAVAILABLE"
    with EmotionClient(secured.grpc_url, timeout_s=10) as client, pytest.raises(ServerUnavailableError) as seen:
        client.classify(CLIP[0])
    print(f"\nplaintext client: {type(seen.value).__name__}: {seen.value}")
    report(secured.area, "plaintext gRPC client vs TLS server", tried=3, as_expected=3, note="UNAVAILABLE")


def test_a_client_trusting_another_ca_is_refused(secured: Secured, pki: Pki, rogue_ca: Path) -> None:
    error = refused(lambda: tls_client(secured.grpc_url, pki, ca=rogue_ca).is_server_live(client_timeout=10))
    assert error.status() == "StatusCode.UNAVAILABLE"
    report(secured.area, "TLS client trusting another CA", tried=1, as_expected=1, note="handshake refused")


@pytest.mark.parametrize(
    "headers",
    [None, {GRPC_HEADER_PREFIX + HEADER: "wrong"}, {HEADER: TOKEN}],
    ids=["none", "wrong-token", "unprefixed"],
)
def test_without_the_token_every_protected_api_is_refused(
    secured: Secured, pki: Pki, request: pytest.FixtureRequest, headers: dict[str, str] | None
) -> None:
    client = tls_client(secured.grpc_url, pki)
    calls = {
        "inference": lambda: client.infer("emotion", [tensor(CLIP)], headers=headers),
        "model-config": lambda: client.get_model_config("emotion", headers=headers),
        "metadata": lambda: client.get_server_metadata(headers=headers),
        "statistics": lambda: client.get_inference_statistics("emotion", headers=headers),
        "model-repository": lambda: client.load_model("classifier", headers=headers),
        "repository-unload": lambda: client.unload_model("emotion", headers=headers),
        "shared-memory": lambda: client.register_system_shared_memory("x", "/x", 64, headers=headers),
        "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=headers),
        "logging": lambda: client.update_log_settings({"log_verbose_level": 1}, headers=headers),
    }
    for api, call in calls.items():
        error = refused(call)
        assert error.status() == "StatusCode.UNAVAILABLE" and RESTRICTED in error.message(), (api, error)
    assert client.is_server_live(headers=headers) and client.is_model_ready("emotion", headers=headers)
    report(secured.area, f"{len(calls)} protected APIs, token {request.node.callspec.id}", tried=len(calls),
           as_expected=len(calls), note="refused: restricted protocol; health still open")  # fmt: skip


def test_with_the_token_inference_is_served_and_model_control_stays_off(secured: Secured, pki: Pki) -> None:
    client = tls_client(secured.grpc_url, pki)
    response = client.infer("emotion", [tensor(CLIP)], headers=GRPC_TOKEN)
    expected = infer(secured.plain.endpoints.grpc_url, CLIP)
    np.testing.assert_allclose(response.as_numpy("probabilities")[0], expected, atol=1e-6)
    for call in (
        lambda: client.unload_model("emotion", headers=GRPC_TOKEN),
        lambda: client.load_model("classifier", headers=GRPC_TOKEN),
    ):
        error = refused(call)
        assert "explicit model load / unload is not allowed" in error.message(), error
    assert client.is_model_ready("emotion", headers=GRPC_TOKEN)
    report(secured.area, "token holder: inference / load / unload", tried=3, as_expected=3,
           note="served; model control off (load/unload refused)")  # fmt: skip


def test_http_needs_the_token_too_and_only_listens_on_loopback(secured: Secured) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    config_url = f"{secured.http_url}/v2/models/emotion/config"
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(config_url, timeout=10)
    assert caught.value.code == 403
    assert f"This API is restricted, expecting header '{HEADER}'" in caught.value.read().decode()
    with opener.open(urllib.request.Request(config_url, headers={HEADER: TOKEN}), timeout=10) as response:
        assert response.status == 200
    with opener.open(f"{secured.http_url}/v2/health/ready", timeout=10) as response:
        assert response.status == 200
    port = secured.http_url.rsplit(":", 1)[1]
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    addresses = {line.split()[1] for line in listening if line.split()[3] == "0A"}  # 0A: LISTEN
    assert f"0100007F:{int(port):04X}" in addresses and f"00000000:{int(port):04X}" not in addresses
    report(secured.area, "HTTP without / with token; bind address", tried=3, as_expected=3,
           note="403 without; 200 with; 127.0.0.1 only")  # fmt: skip


def test_the_sdk_sees_typed_errors_and_is_served_with_tls_and_token(secured: Secured, pki: Pki) -> None:
    tls = TLSConfig(root_certificates=pki.ca)
    with EmotionClient(secured.grpc_url, tls=tls, headers=GRPC_TOKEN, timeout_s=10) as client:
        assert client.classify(CLIP[0]).label in client.model_info().labels
    without_token = EmotionClient(secured.grpc_url, tls=tls, timeout_s=10)
    with without_token as client, pytest.raises(AuthenticationError) as seen:
        client.classify(CLIP[0])
    print(f"\nSDK without the token: {type(seen.value).__name__}: {seen.value}")
    report(secured.area, "SDK with TLS: with / without token", tried=2, as_expected=2,
           note=f"served; {type(seen.value).__name__}")  # fmt: skip


def test_mutual_tls_refuses_a_client_without_a_certificate(tiny_repository: Path, pki: Pki) -> None:
    tls = GrpcTLS(certificate=pki.server_cert, private_key=pki.server_key, client_ca=pki.ca)
    with TritonServer(tiny_repository, tls=tls, auth=TokenAuth(token=TOKEN)) as server:
        url = f"localhost:{server.endpoints.grpc_port}"
        error = refused(lambda: tls_client(url, pki).is_server_live(client_timeout=10))
        assert error.status() == "StatusCode.UNAVAILABLE"
        client = tls_client(url, pki, with_cert=True)
        assert client.is_server_live()
        assert server.auth is not None
        client.infer("emotion", [tensor(CLIP)], headers=server.auth.grpc_headers)
    report("security", "mutual TLS: no client cert / client cert", tried=2, as_expected=2, note="refused; served")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grpc-tls-cert", "cert.pem"], "--grpc-tls-cert and --grpc-tls-key go together"),
        (["--grpc-tls-client-ca", "ca.pem"], "--grpc-tls-client-ca needs --grpc-tls-cert and --grpc-tls-key"),
        (["--auth-token-file", "missing-token"], "cannot read the auth token from missing-token"),
        (["--auth-token-file", "token", "--auth-apis", "inference,admin"], "unknown: ['admin']"),
        (["--auth-token-file", "token", "--auth-header", "Bad Header"], "is not a plain gRPC metadata key"),
        (["--grpc-tls-cert", "token", "--grpc-tls-key", "token"], "is not a PEM file"),
    ],
)
def test_serve_refuses_bad_security_flags_before_starting(
    tiny_repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--model-repository", str(tiny_repository), *extra]) == 2
    assert message in capsys.readouterr().err
