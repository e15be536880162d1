"""Whether the Hub is reachable is asked the way huggingface_hub downloads: through the proxy it would use."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

PROBE = "from emotion_build.model.loading import _hub_reachable; print(_hub_reachable(timeout_s=5))"


class Proxy(http.server.BaseHTTPRequestHandler):
    """An HTTP proxy that answers every request itself, as a corporate proxy answers for the Hub."""

    seen: list[str] = []  # noqa: RUF012 (the handler class is the only place a request can be recorded)

    def do_HEAD(self) -> None:
        Proxy.seen.append(self.requestline)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def probe(**env: str) -> str:
    base = {
        k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip()


def test_the_hub_behind_a_proxy_is_reachable_and_without_one_it_is_not(proxy: str) -> None:
    hub = "http://hub.invalid"  # no DNS answers for .invalid: only the proxy can reach it
    assert probe(HF_ENDPOINT=hub) == "False"
    Proxy.seen.clear()
    assert probe(HF_ENDPOINT=hub, HTTP_PROXY=proxy, http_proxy=proxy) == "True"
    assert Proxy.seen and Proxy.seen[0].startswith("HEAD http://hub.invalid")
    assert probe(HF_ENDPOINT=hub, HTTP_PROXY=proxy, HF_HUB_OFFLINE="1") == "False"
