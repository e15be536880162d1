"""Faults: the server SIGKILLed under load, and one Python-backend stub SIGKILLed.

- Server killed: every call in flight or made afterwards raises the SDK's `ServerUnavailableError`
  within its deadline (no hang); a server restarted on the same ports is then used by the very
  same client object, which recovers without being recreated.
- Stub killed: Triton 2.51 does not restart a dead stub and keeps reporting the server and the
  model ready, while every request that needs the model fails with INTERNAL "Stub process
  '<instance>' is not healthy." (triton-inference-server/server#8604). The test pins that down,
  so that an upgrade that changes it is noticed, and checks what `serve` adds: its watchdog stops
  the server and exits with STUB_DIED_STATUS so that a supervisor restarts it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from triton_probes import ServeProcess, clip, format_table, group_stubs, infer, raw_client, report
from tritonclient.utils import InferenceServerException

from emotion_build.server.endpoints import free_port
from emotion_build.server.launcher import TritonServer
from emotion_build.server.serve import STUB_DIED_STATUS
from emotion_client import EmotionClient, EmotionClientError, ServerError, ServerUnavailableError

TIMEOUT_S = 5.0
"""The SDK deadline of each attempt in these tests."""
HANG_BOUND_S = 3 * TIMEOUT_S + 5.0
"""No call may take longer: three attempts (the SDK's default retries) plus backoff and one probe."""
THREADS = 4
CLIP = clip(2.0, seed=11)
STUB_NOT_HEALTHY = "Stub process 'classifier_0_0' is not healthy."


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


def start_server(repository: Path, ports: tuple[int, int, int]) -> TritonServer:
    grpc, http, metrics = ports
    server = TritonServer(repository, grpc_port=grpc, http_port=http, metrics_port=metrics)
    server.start()
    return server


def test_server_killed_under_load_fails_fast_and_the_same_client_recovers_after_restart(
    tiny_repository: Path, ports: tuple[int, int, int]
) -> None:
    server = start_server(tiny_repository, ports)
    killed_at = 0.0
    try:
        expected = infer(server.endpoints.grpc_url, CLIP)
        shm_regions = {Path("/dev/shm") / stub.shm_region for stub in server.python_stubs()}
        assert shm_regions and all(path.exists() for path in shm_regions)
        calls: list[tuple[float, float, str]] = []  # (start, end, outcome)
        wrong = 0
        stop = threading.Event()
        lock = threading.Lock()
        with EmotionClient(server.endpoints.grpc_url, timeout_s=TIMEOUT_S) as client:

            def load() -> None:
                nonlocal wrong
                failures_after_kill = 0
                while not stop.is_set() and failures_after_kill < 3:
                    started = time.monotonic()
                    try:
                        result = client.classify(CLIP[0])
                        outcome = "served"
                        by_label = {entry.label: entry.score for entry in result.scores}
                        got = np.array([by_label[label] for label in client.model_info().labels])
                        with lock:
                            wrong += int(not np.allclose(got, expected, atol=1e-5))
                    except EmotionClientError as error:
                        outcome = type(error).__name__
                        failures_after_kill += int(killed_at > 0)
                    with lock:
                        calls.append((started, time.monotonic(), outcome))

            threads = [threading.Thread(target=load) for _ in range(THREADS)]
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            assert server.pid is not None
            killed_at = time.monotonic()
            os.kill(server.pid, signal.SIGKILL)
            for thread in threads:
                thread.join(timeout=HANG_BOUND_S * 4)
            stop.set()
            assert not any(thread.is_alive() for thread in threads), "a client call hangs on a dead server"
            assert server.wait() == -signal.SIGKILL
            leaked = sorted(path.name for path in shm_regions if path.exists())

            after = [(end - start, outcome) for start, end, outcome in calls if end > killed_at]
            outcomes = Counter(outcome for _, outcome in after)
            before_kill = sum(1 for _, end, outcome in calls if end <= killed_at and outcome == "served")
            slowest = max(duration for duration, _ in after)
            print(f"\nbefore the kill: {before_kill} served; after it: {dict(outcomes)}, slowest {slowest:.2f} s")
            assert not leaked, f"shared memory of the killed server left in /dev/shm: {leaked}"

            restart_began = time.monotonic()
            server = start_server(tiny_repository, ports)
            restarted_s = time.monotonic() - restart_began
            recovered_at, attempts = None, 0
            while recovered_at is None and time.monotonic() < restart_began + 60:
                attempts += 1
                try:
                    result = client.classify(CLIP[0])
                except ServerUnavailableError:
                    time.sleep(0.2)
                    continue
                recovered_at = time.monotonic()
            assert recovered_at is not None, "the client never recovered after the restart"
            print(
                f"restart took {restarted_s:.1f} s; the same client was served {recovered_at - restart_began:.1f} s "
                f"after the restart began ({attempts} attempts)"
            )
            assert result.label in client.model_info().labels
        report(
            "faults",
            "tritonserver SIGKILLed under load (4 threads)",
            tried=len(after),
            as_expected=sum(1 for d, o in after if o in ("served", "ServerUnavailableError") and d < HANG_BOUND_S),
            lost=wrong,
            note=f"all ServerUnavailableError, slowest {slowest:.1f} s; same client served again "
            f"{recovered_at - restart_began:.1f} s after restart",
        )
        assert wrong == 0
        assert set(outcomes) <= {"served", "ServerUnavailableError"}, outcomes
        assert outcomes["ServerUnavailableError"] >= THREADS * 3
        assert slowest < HANG_BOUND_S
    finally:
        if server.running:
            server.stop()


@pytest.fixture
def stub_victim(tiny_repository: Path) -> Iterator[TritonServer]:
    server = TritonServer(tiny_repository)
    server.start()
    yield server
    # With a dead stub, a graceful shutdown waits out the whole --exit-timeout-secs (20 s).
    server.stop(timeout_s=2)


def test_a_killed_stub_is_not_restarted_and_its_model_fails_while_reporting_ready(stub_victim: TritonServer) -> None:
    """What Triton 2.51 does by itself; `serve` adds the watchdog checked below."""
    server, url = stub_victim, stub_victim.endpoints.grpc_url
    expected = infer(url, CLIP)
    (classifier,) = [stub for stub in server.python_stubs() if stub.model == "classifier"]
    os.kill(classifier.pid, signal.SIGKILL)
    time.sleep(0.5)

    failures = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as caught:
            infer(url, CLIP)
        failures.append(time.monotonic() - started)
        assert caught.value.status() == "StatusCode.INTERNAL"
        assert STUB_NOT_HEALTHY in caught.value.message()
    with EmotionClient(url, timeout_s=TIMEOUT_S) as client, pytest.raises(ServerError) as seen:
        client.classify(CLIP[0])
    assert STUB_NOT_HEALTHY in str(seen.value)

    # Still "ready": health checks do not notice (triton-inference-server/server#8604).
    triton = raw_client(url)
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("classifier")
    assert [stub.model for stub in server.python_stubs()].count("classifier") == 0, "Triton restarted the stub"
    # The preprocess stubs are separate processes and keep working.
    assert infer(url, CLIP, model="preprocess", output="waveform").shape == (CLIP.shape[1],)
    rows = [
        ("raw tritonclient", "INTERNAL", STUB_NOT_HEALTHY, f"{np.median(failures):.2f} s"),
        ("SDK", type(seen.value).__name__, "server error from model 'emotion': ...", ""),
        ("/v2/health/ready, model ready", "200, true", "", ""),
    ]
    print("\n" + format_table(("who", "sees", "message", "time to fail"), rows))
    report(
        "faults",
        "classifier stub SIGKILLed (bare tritonserver)",
        tried=4,
        as_expected=4,
        note=f"not restarted; INTERNAL '{STUB_NOT_HEALTHY}' after {np.median(failures):.1f} s; still ready",
    )
    assert expected.shape == (4,)


def test_serve_stops_when_a_stub_dies_so_a_supervisor_can_restart_it(tiny_repository: Path, tmp_path: Path) -> None:
    grpc, http, metrics = free_port(), free_port(), free_port()
    args = ["--model-repository", str(tiny_repository), "--grpc-port", str(grpc), "--http-port", str(http)]
    serve = ServeProcess([*args, "--metrics-port", str(metrics)], tmp_path / "serve.log").start()
    try:
        url = f"127.0.0.1:{grpc}"
        infer(url, CLIP)
        stubs = group_stubs(serve.server_pid)
        (victim,) = [pid for pid, instance in stubs.items() if instance.startswith("classifier")]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        status = serve.wait(timeout_s=60)
        stopped_s = time.monotonic() - killed_at
    finally:
        serve.stop()
    log = serve.log()
    assert status == STUB_DIED_STATUS, log[-3000:]
    assert f"the Python-backend stub of classifier_0_0 (pid {victim}) died" in log
    assert "stopping the server so that its supervisor restarts it" in log
    assert group_stubs(serve.server_pid) == {}
    with pytest.raises(InferenceServerException) as caught:
        raw_client(url).is_server_live()
    assert caught.value.status() == "StatusCode.UNAVAILABLE"
    print(f"\nserve exited with status {status} {stopped_s:.1f} s after the stub was killed")
    report(
        "faults",
        "classifier stub SIGKILLed (`serve` watchdog)",
        tried=1,
        as_expected=1,
        note=f"serve stopped the server, exit {STUB_DIED_STATUS} after {stopped_s:.1f} s",
    )
