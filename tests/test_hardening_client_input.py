"""Bad input at the SDK: a typed `InvalidAudioError` that names the file and the problem, raised
before any inference reaches the server (its statistics must not move).

The absurd-rate and many-channel cases were SDK gaps found by this file; the SDK now refuses
them (`MIN_SAMPLE_RATE_HZ`, `MAX_SAMPLE_RATE_HZ`, `MAX_CHANNELS` in `emotion_client._defaults`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from triton_probes import ModelCounts, model_counts, report

from emotion_build.server.launcher import TritonServer
from emotion_client import EmotionClient, InvalidAudioError


def wav_bytes(*, rate: int, channels: int, frames: int) -> bytes:
    """A 16-bit PCM WAV written by hand, so that headers no audio library would write can be made."""
    data = np.random.default_rng(0).integers(-3000, 3000, frames * channels, dtype=np.int16).tobytes()
    block = channels * 2
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, min(rate * block, 2**32 - 1), block, 16)
    return header + b"data" + struct.pack("<I", len(data)) + data


def write(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(content)
        return path

    return make


def missing(directory: Path) -> Path:
    return directory / "no-such-recording.wav"


# (id, how to make the file, words the message must hold besides the path)
FILE_CASES = [
    pytest.param(missing, ("not found",), id="missing-file"),
    pytest.param(write("empty.wav", b""), ("empty", "0 bytes"), id="empty-file"),
    pytest.param(write("random.wav", os.urandom(4096)), ("cannot read", "Format not recognised"), id="corrupt-bytes"),
    pytest.param(write("notes.wav", b"meeting notes, not audio\n" * 40), ("cannot read",), id="text-named-wav"),
    pytest.param(
        write("header-only.wav", wav_bytes(rate=16000, channels=1, frames=0)), ("no samples",), id="no-frames"
    ),
    pytest.param(
        write("voice.m4a", b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + os.urandom(2048)),
        ("cannot read", "WAV, FLAC, OGG, MP3"),
        id="unsupported-m4a",
    ),
    pytest.param(
        write("tune.mid", b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"),
        ("cannot read",),
        id="unsupported-midi",
    ),
    pytest.param(write("zero-hz.wav", wav_bytes(rate=0, channels=1, frames=16000)), ("cannot read",), id="0-hz-header"),
    pytest.param(
        write("4096-channels.wav", wav_bytes(rate=16000, channels=4096, frames=50)),
        ("Too many channels",),
        id="4096-channels",
    ),
    pytest.param(
        write("one-hz.wav", wav_bytes(rate=1, channels=1, frames=4)),
        ("sample rate", "1 Hz"),
        id="1-hz-header",
    ),
    pytest.param(
        write("1024-channels.wav", wav_bytes(rate=16000, channels=1024, frames=2000)),
        ("channels", "1024"),
        id="1024-channels",
    ),
]


@pytest.fixture(scope="module")
def client(triton: TritonServer) -> Iterator[EmotionClient]:
    with EmotionClient(triton.endpoints.grpc_url, timeout_s=30) as sdk:
        sdk.model_info()  # fetched once up front: what follows must send nothing at all
        yield sdk


def server_counts(triton: TritonServer) -> dict[str, ModelCounts]:
    return {model: model_counts(triton.endpoints.grpc_url, model) for model in ("emotion", "preprocess")}


@pytest.mark.parametrize(("make", "words"), FILE_CASES)
def test_bad_files_raise_a_typed_error_naming_the_file(
    triton: TritonServer,
    client: EmotionClient,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    make: Callable[[Path], Path],
    words: tuple[str, ...],
) -> None:
    path = make(tmp_path)
    case = request.node.callspec.id
    before = server_counts(triton)
    try:
        client.classify(path)
    except InvalidAudioError as error:
        message = str(error)
        sent = server_counts(triton) != before
        ok = str(path) in message and all(word in message for word in words) and not sent
        report("bad input (SDK)", case, tried=1, as_expected=int(ok), note="sent first" if sent else "")
        assert str(path) in message, message
        for word in words:
            assert word in message, message
        assert error.status is None  # raised locally, not by the server
        assert not sent, "the SDK sent the clip before refusing it"
        return
    report("bad input (SDK)", case, tried=1, as_expected=0, note="accepted and sent")
    pytest.fail(f"{case}: the SDK accepted {path.name} and sent it")


@pytest.mark.parametrize(
    ("samples", "rate", "words"),
    [
        pytest.param(np.zeros(16000, np.float32), 0, ("sample_rate", "got 0"), id="0-hz-array"),
        pytest.param(np.zeros(16000, np.float32), -16000, ("sample_rate", "got -16000"), id="negative-rate-array"),
        pytest.param(
            np.zeros(16000, np.float32),
            10**9,
            ("sample_rate", "1000000000"),
            id="1-ghz-array",
        ),
        pytest.param(
            np.zeros((2000, 1024), np.float32),
            16000,
            ("channels", "1024"),
            id="1024-channel-array",
        ),
    ],
)
def test_bad_arrays_raise_a_typed_error_naming_the_problem(
    triton: TritonServer,
    client: EmotionClient,
    request: pytest.FixtureRequest,
    samples: npt.NDArray[np.generic],
    rate: int,
    words: tuple[str, ...],
) -> None:
    case = request.node.callspec.id
    before = server_counts(triton)
    with pytest.raises(InvalidAudioError) as caught:
        try:
            client.classify(samples, sample_rate=rate)
        except InvalidAudioError as error:
            report("bad input (SDK)", case, tried=1, as_expected=int(all(w in str(error) for w in words)))
            raise
        report("bad input (SDK)", case, tried=1, as_expected=0, note="accepted and sent")
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert server_counts(triton) == before, "the SDK sent the clip before refusing it"
