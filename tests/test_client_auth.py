"""Extra headers as an auth token, against a tritonserver whose gRPC protocols are restricted with
--grpc-restricted-protocol: a client with the header is served, one without is refused with a typed
error that names the header, and the refusal is not retried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile
from tritonclient.utils import InferenceServerException

from emotion_build.server.launcher import TritonServer
from emotion_client import AsyncEmotionClient, AuthenticationError, EmotionClient, EmotionClientError
from emotion_client.cli import main

TOKEN = "s3cret-token"
HEADER = "triton-grpc-protocol-x-emotion-token"
"""Triton expects the configured key with this prefix."""
GOOD = {HEADER: TOKEN}


def noise(seconds: float = 1.0, seed: int = 0) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))).astype(np.float32)


@pytest.fixture(scope="module")
def restricted(tiny_repository: Path) -> Iterator[TritonServer]:
    protocols = "health,metadata,model-config,inference"
    args = [f"--grpc-restricted-protocol={protocols}:x-emotion-token={TOKEN}"]
    with TritonServer(tiny_repository, extra_args=args) as server:
        yield server


def test_the_token_header_is_sent_on_every_call(restricted: TritonServer) -> None:
    with EmotionClient(restricted.endpoints.grpc_url, headers=GOOD) as client:
        client.wait_until_ready(10)  # health calls carry the header too
        assert client.classify(noise()).label in client.model_info().labels
        items = client.classify_many([noise(seed=s) for s in range(3)])
        assert all(item.ok for item in items)


@pytest.mark.parametrize(
    "headers", [None, {HEADER: "wrong"}, {"x-emotion-token": TOKEN}], ids=["none", "wrong", "bare"]
)
def test_a_client_without_the_right_header_is_refused_clearly(
    restricted: TritonServer, headers: dict[str, str] | None, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="emotion_client"),
        EmotionClient(restricted.endpoints.grpc_url, headers=headers) as client,
    ):
        with pytest.raises(AuthenticationError) as caught:
            client.classify(noise())
        (health,) = client.health()
    message = str(caught.value)
    assert f"requires the header '{HEADER}'" in message
    assert f"headers={{'{HEADER}': '<token>'}}" in message
    assert TOKEN not in message  # the error never echoes a secret
    assert isinstance(caught.value.__cause__, InferenceServerException)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # a retry cannot fix it
    assert health.ready is False and HEADER in (health.error or "")


def test_async_client_sends_headers(restricted: TritonServer) -> None:
    async def run() -> tuple[str, EmotionClientError | None]:
        async with AsyncEmotionClient(restricted.endpoints.grpc_url, headers=GOOD) as client:
            label = (await client.classify(noise())).label
        async with AsyncEmotionClient(restricted.endpoints.grpc_url) as anonymous:
            try:
                await anonymous.model_info()
            except EmotionClientError as e:
                return label, e
        return label, None

    label, refusal = asyncio.run(run())
    assert label
    assert type(refusal) is AuthenticationError


def test_cli_header_option(restricted: TritonServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, noise(), 16000)
    url = ["--url", restricted.endpoints.grpc_url]
    assert main(["classify", str(clip), *url, "--header", f"{HEADER}={TOKEN}"]) == 0
    assert str(clip) in capsys.readouterr().out
    assert main(["classify", str(clip), *url]) == 1
    assert f"--header {HEADER}=<token>" in capsys.readouterr().err
    assert main(["labels", *url, "--header", f"{HEADER.upper()}={TOKEN}"]) == 0  # names are case-insensitive
    with pytest.raises(SystemExit) as usage:
        main(["labels", *url, "--header", "no-equals-sign"])
    assert usage.value.code == 2
