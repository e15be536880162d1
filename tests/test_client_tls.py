"""TLS for real: tritonserver started with --grpc-use-ssl (and mutual TLS) on certificates this
module generates, reached by both clients and the CLI; misconfigurations fail with typed errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from certificates import Pki, make_pki

from emotion_build.server.launcher import TritonServer
from emotion_client import (
    AsyncEmotionClient,
    EmotionClient,
    RetryPolicy,
    ServerUnavailableError,
    TLSConfig,
    TLSError,
)
from emotion_client.cli import main

NO_RETRY = RetryPolicy(max_retries=0)


def noise(seconds: float = 1.0, seed: int = 0) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))).astype(np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "trusted")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A second, unrelated CA: its certificates must not be accepted where `pki` is expected."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), "stranger")


@pytest.fixture(scope="module")
def tls_server(tiny_repository: Path, pki: Pki) -> Iterator[TritonServer]:
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={pki.server_cert}", f"--grpc-server-key={pki.server_key}"]
    with TritonServer(tiny_repository, extra_args=args) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tiny_repository: Path, pki: Pki) -> Iterator[TritonServer]:
    with TritonServer(tiny_repository, extra_args=pki.mutual_tls_args()) as server:
        yield server


def test_tls_client_trusting_the_ca_classifies(tls_server: TritonServer, pki: Pki) -> None:
    port = tls_server.endpoints.grpc_port
    tls = TLSConfig(root_certificates=pki.ca)
    # by IP and by name: the certificate carries both, and gRPC checks the one in the URL
    with EmotionClient(f"127.0.0.1:{port}", tls=tls) as by_ip, EmotionClient(f"localhost:{port}", tls=tls) as by_name:
        first = by_ip.classify(noise())
        assert by_name.classify(noise()) == first
        assert by_ip.is_ready() and by_name.is_ready()


def test_async_client_over_tls(tls_server: TritonServer, pki: Pki) -> None:
    async def run() -> bool:
        async with AsyncEmotionClient(tls_server.endpoints.grpc_url, tls=TLSConfig(root_certificates=pki.ca)) as c:
            items = await c.classify_many([noise(seed=s) for s in range(4)])
            return all(item.ok for item in items) and await c.is_ready()

    assert asyncio.run(run())


def test_plaintext_client_to_a_tls_server_is_told_about_tls(tls_server: TritonServer) -> None:
    with EmotionClient(tls_server.endpoints.grpc_url, retry=NO_RETRY) as client:
        with pytest.raises(ServerUnavailableError, match="tls=") as caught:
            client.classify(noise())
        assert not isinstance(caught.value, TLSError)  # gRPC only sees a closed socket
        assert client.is_ready() is False


@pytest.mark.parametrize("trust", ["system roots", "another CA"])
def test_an_untrusted_server_certificate_is_a_tls_error_and_not_retried(
    tls_server: TritonServer, other_pki: Pki, trust: str, caplog: pytest.LogCaptureFixture
) -> None:
    tls: TLSConfig | bool = True if trust == "system roots" else TLSConfig(root_certificates=other_pki.ca)
    with (
        caplog.at_level(logging.INFO, logger="emotion_client"),
        EmotionClient(tls_server.endpoints.grpc_url, tls=tls) as client,
    ):
        with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            client.classify(noise())
        (health,) = client.health()
    assert caught.value.status == "StatusCode.UNAVAILABLE"  # what gRPC says; the class says why
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    assert health.live is False and "TLS handshake" in (health.error or "")


def test_mutual_tls_needs_the_client_certificate(mtls_server: TritonServer, pki: Pki, other_pki: Pki) -> None:
    url = mtls_server.endpoints.grpc_url
    full = TLSConfig(root_certificates=pki.ca, client_certificate=pki.client_cert, client_key=pki.client_key)
    with EmotionClient(url, tls=full) as client:
        assert client.classify(noise()).label in client.model_info().labels
    server_only = TLSConfig(root_certificates=pki.ca)
    stranger = TLSConfig(
        root_certificates=pki.ca, client_certificate=other_pki.client_cert, client_key=other_pki.client_key
    )
    for refused in (server_only, stranger):
        with EmotionClient(url, tls=refused, retry=NO_RETRY) as client, pytest.raises(ServerUnavailableError):
            client.model_info()


def test_cli_over_mutual_tls(
    mtls_server: TritonServer, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, noise(), 16000)
    tls_args = ["--root-certs", str(pki.ca), "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key)]
    url = ["--url", mtls_server.endpoints.grpc_url]
    assert main(["classify", str(clip), *url, *tls_args, "--json"]) == 0
    assert '"label"' in capsys.readouterr().out
    assert main(["health", *url, "--retries", "0"]) == 1  # plaintext is refused
    assert "no" in capsys.readouterr().out
    assert main(["health", *url, *tls_args]) == 0
