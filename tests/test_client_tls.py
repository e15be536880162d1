"""TLS for real: tritonserver started with --grpc-use-ssl (and mutual TLS) on certificates this
module generates, reached by both clients and the CLI; misconfigurations fail with typed errors."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emotion_build.server import TritonServer
from emotion_client import (
    AsyncEmotionClient,
    EmotionClient,
    RetryPolicy,
    ServerUnavailableError,
    TLSConfig,
    TLSError,
)
from emotion_client.cli import main


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def make_pki(directory: Path, label: str) -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all signed by the CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} test CA"))
        .issuer_name(_name(f"{label} test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        stem = f"{label}-{common_name}"
        return _write_cert(directory / f"{stem}.pem", cert), _write_key(directory / f"{stem}.key", key)

    server_cert, server_key = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return Pki(_write_cert(directory / f"{label}-ca.pem", ca), server_cert, server_key, client_cert, client_key)


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
    args = [
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={pki.server_cert}",
        f"--grpc-server-key={pki.server_key}",
        f"--grpc-root-cert={pki.ca}",
    ]
    with TritonServer(tiny_repository, extra_args=args) as server:
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
