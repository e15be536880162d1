"""The SDK guide runs as written: every python block of docs/sdk.md and of README's "Call it" section
against a real tritonserver (the TLS one against a mutual-TLS server on generated certificates), every
`emotion-client` line of their shell blocks through the installed command, and the defaults the guide
quotes match the code."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from certificates import Pki, make_pki

from emotion_build.server.launcher import TritonServer
from emotion_client import _defaults as defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
README_URL = "localhost:8001"
README_SECTION = "## Call it"


def sdk_guide() -> str:
    return (REPO_ROOT / "docs" / "sdk.md").read_text(encoding="utf-8")


def readme_section() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{README_SECTION}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(language: str) -> list[str]:
    return [
        block
        for text in (readme_section(), sdk_guide())
        for block in re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    ]


PYTHON_BLOCKS = blocks("python")
EXPECTED_OUTPUT = {
    "for path in sorted": "samples/greeting.wav ",
    "wait_until_ready": "('neu', 'hap', 'ang', 'sad')",
    "top_k=2": "['",
    "classify_many(paths": "failed: audio file not found: 'samples/missing.wav'",
    "AsyncEmotionClient": "(0, True)",
    "RetryPolicy": "fix the input: audio file not found",
    "headers=": " True True None",
    "TLSConfig": "",
    "client.embed": "float32 (",
    "client.models()": "emotion (1,) wav2vec2 ('neu', 'hap', 'ang', 'sad')",
}
"""A phrase that picks out each block, and something its output must contain."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("readme-certs"), "readme")


@pytest.fixture(scope="module")
def mtls_server(tiny_repository: Path, pki: Pki) -> Iterator[TritonServer]:
    with TritonServer(tiny_repository, extra_args=pki.mutual_tls_args()) as server:
        yield server


def test_the_guide_has_the_examples_this_test_knows() -> None:
    assert len(PYTHON_BLOCKS) == len(EXPECTED_OUTPUT)
    for phrase in EXPECTED_OUTPUT:
        assert sum(phrase in block for block in PYTHON_BLOCKS) == 1, phrase


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(
    index: int, triton: TritonServer, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = PYTHON_BLOCKS[index]
    (phrase,) = [p for p in EXPECTED_OUTPUT if p in code]
    if "TLSConfig" in code:
        pki: Pki = request.getfixturevalue("pki")
        server: TritonServer = request.getfixturevalue("mtls_server")
        code = code.replace(README_URL, f"localhost:{server.endpoints.grpc_port}")
        for name, path in (("ca.pem", pki.ca), ("client.pem", pki.client_cert), ("client.key", pki.client_key)):
            code = code.replace(f'"certs/{name}"', repr(str(path)))
    else:
        code = code.replace(README_URL, triton.endpoints.grpc_url)
    assert README_URL not in code
    monkeypatch.chdir(REPO_ROOT)  # the examples use samples/
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, f"SDK guide python block {index + 1}", "exec"), {"__name__": "__readme__"})
    printed = output.getvalue()
    print(printed)
    assert printed.strip(), "every example prints something"
    assert EXPECTED_OUTPUT[phrase] in printed


def test_cli_examples_run(triton: TritonServer) -> None:
    lines = [
        line.split("  #")[0].strip()
        for block in blocks("sh")
        for line in block.splitlines()
        if line.startswith("emotion-client ")
    ]
    assert len(lines) >= 5
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "EMOTION_CLIENT_URL": triton.endpoints.grpc_url,
    }
    for line in lines:
        command = line.replace(README_URL, triton.endpoints.grpc_url)
        done = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        assert done.stdout.strip(), line


def test_quoted_defaults_match_the_code() -> None:
    section = sdk_guide()
    assert f"default {defaults.DEFAULT_MAX_RETRIES} retries" in section
    times = "\N{MULTIPLICATION SIGN}"
    assert (
        f"min({defaults.DEFAULT_BACKOFF_MAX_S:g} s, {defaults.DEFAULT_BACKOFF_BASE_S:g} s {times} 2^attempt)" in section
    )
    assert f"(default {defaults.DEFAULT_TIMEOUT_S:g} s;" in section
    assert f"out of the rotation for {defaults.ENDPOINT_COOLDOWN_S:g} s" in section
    assert f"`${defaults.URL_ENV_VAR}`, else\n`{defaults.DEFAULT_URL}`" in section
