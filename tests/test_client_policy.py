"""Pure parts of the SDK, tested without a server: retry policy and backoff, endpoint round-robin,
connection settings, error mapping of auth/TLS refusals, batch bookkeeping, progress bar, CLI table."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from emotion_client import (
    AuthenticationError,
    BatchItem,
    BatchProgress,
    Classification,
    EmotionClientError,
    InvalidAudioError,
    LabelScore,
    ModelNotReadyError,
    RequestTimeoutError,
    RetryPolicy,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
    TLSConfig,
    TLSError,
    TransportError,
)
from emotion_client import _defaults as defaults
from emotion_client._base import BatchCollector, ClientCore, validate_concurrency
from emotion_client.cli.output import format_table
from emotion_client.cli.progress import ProgressBar
from emotion_client.connection import channel_args, normalize_headers, parse_urls, tls_client_kwargs
from emotion_client.errors import from_triton_error, is_ambiguous_unavailable
from emotion_client.retry import backoff_delay_s, is_retryable, should_retry

UNAVAILABLE = "StatusCode.UNAVAILABLE"


def triton_error(message: str, status: str | None) -> InferenceServerException:
    return InferenceServerException(message, status=status)


# --- retry policy -----------------------------------------------------------------------------


def test_defaults_live_in_the_defaults_module() -> None:
    policy = RetryPolicy()
    assert policy.max_retries == defaults.DEFAULT_MAX_RETRIES
    assert policy.backoff_base_s == defaults.DEFAULT_BACKOFF_BASE_S
    assert policy.backoff_max_s == defaults.DEFAULT_BACKOFF_MAX_S


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ServerUnavailableError("down", status=UNAVAILABLE), True),
        (ModelNotReadyError("loading", status=UNAVAILABLE), True),  # only after a liveness probe; still UNAVAILABLE
        (ServerBusyError("queue full", status=UNAVAILABLE), True),
        (TLSError("bad certificate", status=UNAVAILABLE), False),
        (AuthenticationError("restricted", status=UNAVAILABLE), False),
        (RequestTimeoutError("slow", status="StatusCode.DEADLINE_EXCEEDED"), False),
        (InvalidAudioError("short", status="StatusCode.INVALID_ARGUMENT"), False),
        (ServerError("boom", status="StatusCode.INTERNAL"), False),
        (TransportError("cancelled", status="StatusCode.CANCELLED"), False),
        (ServerUnavailableError("no status"), False),  # raised locally, e.g. by wait_until_ready
    ],
)
def test_only_unavailable_is_retried(error: EmotionClientError, retried: bool) -> None:
    assert is_retryable(error) is retried
    assert should_retry(error, attempt=0, policy=RetryPolicy(max_retries=3)) is retried


def test_retries_stop_when_the_budget_is_spent() -> None:
    error = ServerUnavailableError("down", status=UNAVAILABLE)
    policy = RetryPolicy(max_retries=2)
    assert [should_retry(error, attempt=a, policy=policy) for a in range(4)] == [True, True, False, False]
    assert should_retry(error, attempt=0, policy=RetryPolicy(max_retries=0)) is False


def test_backoff_bound_doubles_then_caps() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0)
    upper = [backoff_delay_s(a, policy=policy, uniform=lambda low, high: high) for a in range(6)]
    assert upper == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    lower = [backoff_delay_s(a, policy=policy, uniform=lambda low, high: low) for a in range(6)]
    assert lower == [0.0] * 6  # full jitter: anything from zero up to the bound
    assert backoff_delay_s(10_000, policy=policy, uniform=lambda low, high: high) == 1.0  # no overflow


def test_backoff_is_jittered_over_the_whole_range() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=0.5)
    rng = random.Random(7)
    delays = [backoff_delay_s(3, policy=policy, uniform=rng.uniform) for _ in range(2000)]
    assert all(0.0 <= d <= 0.5 for d in delays)
    assert min(delays) < 0.05 and max(delays) > 0.45  # spread, not clustered at the bound
    assert len({round(d, 6) for d in delays}) > 1900
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay_s(-1, policy=policy)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"backoff_base_s": -0.1},
        {"backoff_max_s": float("inf")},
        {"backoff_base_s": 2.0, "backoff_max_s": 1.0},
    ],
)
def test_retry_policy_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- error mapping of refusals Triton and gRPC send as UNAVAILABLE -------------------------------


def test_restricted_protocol_refusal_is_an_authentication_error_naming_the_header() -> None:
    raw = triton_error(
        "This protocol is restricted, expecting header 'triton-grpc-protocol-x-emotion-token'", UNAVAILABLE
    )
    assert not is_ambiguous_unavailable(raw)  # no liveness probe needed: the server answered
    mapped = from_triton_error(raw, model_name="emotion", url="host:8001")
    assert type(mapped) is AuthenticationError
    assert "host:8001" in str(mapped)
    assert "headers={'triton-grpc-protocol-x-emotion-token': '<token>'}" in str(mapped)
    assert not is_retryable(mapped)


@pytest.mark.parametrize("status", ["StatusCode.UNAUTHENTICATED", "StatusCode.PERMISSION_DENIED"])
def test_grpc_auth_statuses_are_authentication_errors(status: str) -> None:
    mapped = from_triton_error(triton_error("token expired", status), model_name="emotion")
    assert type(mapped) is AuthenticationError
    assert isinstance(mapped, ServerError)
    assert mapped.status == status


def test_tls_handshake_failure_is_a_tls_error_not_retried() -> None:
    raw = triton_error(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
        "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED",
        UNAVAILABLE,
    )
    assert not is_ambiguous_unavailable(raw)
    mapped = from_triton_error(raw, model_name="emotion", server_live=True)
    assert type(mapped) is TLSError
    assert isinstance(mapped, ServerUnavailableError)
    assert "root_certificates" in str(mapped)
    assert not is_retryable(mapped)


@pytest.mark.parametrize("message", ["Exceeds maximum queue size", "Request timeout expired"])
def test_a_full_model_queue_is_a_retryable_busy_error(message: str) -> None:
    raw = triton_error(message, UNAVAILABLE)
    assert not is_ambiguous_unavailable(raw)  # the server answered: no liveness probe
    mapped = from_triton_error(raw, model_name="emotion", server_live=True, url="replica:8001")
    assert type(mapped) is ServerBusyError
    assert isinstance(mapped, ServerUnavailableError)
    assert "replica:8001 is too busy" in str(mapped) and "fewer requests at once" in str(mapped)
    assert is_retryable(mapped)


def test_a_busy_replica_stays_in_the_rotation() -> None:
    clock = Clock()
    core = make_core(["a:1", "b:2"], clock)
    assert core.retry_delay_s(ServerBusyError("queue full", status=UNAVAILABLE), 0, 0) is not None
    assert [core.next_endpoint() for _ in range(4)] == [0, 1, 0, 1]


def test_socket_closed_hints_at_tls() -> None:
    raw = triton_error("failed to connect to all addresses; last error: UNAVAILABLE: Socket closed", UNAVAILABLE)
    mapped = from_triton_error(raw, model_name="emotion")
    assert type(mapped) is ServerUnavailableError
    assert "tls=" in str(mapped)
    assert is_retryable(mapped)


def test_timeout_message_names_endpoint_and_what_to_do() -> None:
    raw = triton_error("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")
    mapped = from_triton_error(raw, model_name="emotion", url="replica-2:8001")
    assert type(mapped) is RequestTimeoutError
    assert "replica-2:8001" in str(mapped) and "timeout_s" in str(mapped)


# --- connection settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost:8001", ("localhost:8001",)),
        ("a:1, b:2,,", ("a:1", "b:2")),
        (["a:1", "b:2,c:3"], ("a:1", "b:2", "c:3")),
        (("a:1", "a:1"), ("a:1", "a:1")),  # a repeat is a weight, kept
        ("[::1]:8001", ("[::1]:8001",)),
    ],
)
def test_parse_urls(given: str | list[str], expected: tuple[str, ...]) -> None:
    assert parse_urls(given) == expected


@pytest.mark.parametrize(
    ("given", "match"), [("", "no endpoint"), (" , ", "no endpoint"), ("grpc://h:1", "scheme"), ("h:1/x", "host:port")]
)
def test_parse_urls_rejects(given: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_urls(given)


def test_headers_are_lower_cased_and_validated() -> None:
    assert normalize_headers({"X-Emotion-Token": "s3cret"}) == {"x-emotion-token": "s3cret"}
    assert normalize_headers(None) == {}
    for bad in ({"bad key": "v"}, {"grpc-timeout": "1"}, {"data-bin": "v"}, {"k": "line\nbreak"}):
        with pytest.raises(ValueError):
            normalize_headers(bad)


def test_tls_config_checks_files_up_front(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01")
    with pytest.raises(ValueError, match="cannot read"):
        TLSConfig(root_certificates=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="not a PEM file"):
        TLSConfig(root_certificates=not_pem)
    with pytest.raises(ValueError, match="both client_certificate and client_key"):
        TLSConfig(client_certificate=pem)
    assert tls_client_kwargs(TLSConfig(root_certificates=pem)) == {
        "ssl": True,
        "root_certificates": str(pem),
        "certificate_chain": None,
        "private_key": None,
    }
    assert tls_client_kwargs(True)["ssl"] is True and tls_client_kwargs(True)["root_certificates"] is None
    assert tls_client_kwargs(None) == {"ssl": False}


def test_channels_have_no_message_limit_and_balance_round_robin() -> None:
    args = dict(channel_args())
    assert args["grpc.max_send_message_length"] == args["grpc.max_receive_message_length"] == 2**31 - 1
    assert args["grpc.lb_policy_name"] == "round_robin"


# --- endpoint rotation ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_core(url: str | list[str], clock: Clock, **overrides: Any) -> ClientCore:
    settings: dict[str, Any] = {
        "model_name": "emotion",
        "model_version": "",
        "timeout_s": 5.0,
        "retry": None,
        "headers": None,
        "tls": None,
        "verbose": False,
    }
    return ClientCore(url, **{**settings, **overrides}, clock=clock)


def test_round_robin_skips_an_endpoint_that_just_failed_until_its_cooldown_ends() -> None:
    clock = Clock()
    core = make_core(["a:1", "b:2", "c:3"], clock)
    assert [core.next_endpoint() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    core.mark_down(1)
    assert [core.next_endpoint() for _ in range(4)] == [0, 2, 0, 2]
    clock.now += defaults.ENDPOINT_COOLDOWN_S
    assert sorted(core.next_endpoint() for _ in range(3)) == [0, 1, 2]


def test_when_every_endpoint_is_down_rotation_goes_on() -> None:
    clock = Clock()
    core = make_core(["a:1", "b:2"], clock)
    core.mark_down(0)
    core.mark_down(1)
    assert [core.next_endpoint() for _ in range(4)] == [0, 1, 0, 1]


def test_retry_delay_marks_the_endpoint_down_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    core = make_core(["a:1", "b:2"], clock)
    error = ServerUnavailableError("down", status=UNAVAILABLE)
    with caplog.at_level("INFO", logger="emotion_client"):
        delay = core.retry_delay_s(error, 0, 0)
    assert delay is not None and 0 <= delay <= defaults.DEFAULT_BACKOFF_BASE_S
    assert "retrying" in caplog.text and "a:1" in caplog.text
    assert [core.next_endpoint() for _ in range(3)] == [1, 1, 1]
    assert core.retry_delay_s(AuthenticationError("no", status=UNAVAILABLE), 0, 1) is None


def test_client_settings_are_validated_before_any_channel_exists() -> None:
    clock = Clock()
    with pytest.raises(ValueError, match="timeout_s"):
        make_core("a:1", clock, timeout_s=0)
    with pytest.raises(ValueError, match="model_name"):
        make_core("a:1", clock, model_name="")
    with pytest.raises(TypeError, match="retry"):
        make_core("a:1", clock, retry=3)
    described = make_core("a:1,b:2", clock).describe("EmotionClient")
    assert described == "EmotionClient(url=['a:1', 'b:2'], model_name='emotion')"
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="concurrency"):
            validate_concurrency(bad)  # type: ignore[arg-type]


# --- batch results ----------------------------------------------------------------------------


def classification(label: str) -> Classification:
    return Classification(label=label, score=0.9, scores=(LabelScore(label, 0.9),), untrained=False)


def test_batch_item_holds_exactly_one_outcome() -> None:
    good = BatchItem(index=0, source="a.wav", result=classification("hap"))
    bad = BatchItem(index=1, source="b.wav", error=InvalidAudioError("too short"))
    assert good.ok and good.unwrap().label == "hap"
    assert not bad.ok
    with pytest.raises(InvalidAudioError, match="too short"):
        bad.unwrap()
    with pytest.raises(ValueError):
        BatchItem(index=2, source="c.wav")
    with pytest.raises(ValueError):
        BatchItem(index=2, source="c.wav", result=classification("hap"), error=InvalidAudioError("x"))


@pytest.mark.parametrize("ordered", [True, False])
def test_batch_collector_orders_and_reports_progress(ordered: bool) -> None:
    seen: list[BatchProgress] = []
    collector = BatchCollector(3, ordered=ordered, on_progress=seen.append)
    finished = [
        BatchItem(index=2, source="c", result=classification("sad")),
        BatchItem(index=0, source="a", error=InvalidAudioError("bad")),
        BatchItem(index=1, source="b", result=classification("hap")),
    ]
    for item in finished:
        collector.add(item)
    assert [(p.done, p.failed, p.total, p.item.index) for p in seen] == [(1, 0, 3, 2), (2, 1, 3, 0), (3, 1, 3, 1)]
    expected = [0, 1, 2] if ordered else [2, 0, 1]
    assert [item.index for item in collector.results()] == expected


# --- CLI presentation -------------------------------------------------------------------------


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = Clock()
    stream = Terminal()
    bar = ProgressBar(4, stream=stream, clock=clock)
    for done in range(1, 5):
        clock.now += 0.5
        item = BatchItem(index=done - 1, source="x", result=classification("hap"))
        bar(BatchProgress(item=item, done=done, failed=1 if done > 2 else 0, total=4))
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    assert "classify 4/4 [" + "#" * 28 + "] 100%  1 failed  2.0/s" in text
    assert bar.render(1, 0, 0.1) == "classify 1/4 [#######" + "-" * 21 + "]  25%"


def test_table_aligns_results_and_failures() -> None:
    items = [
        BatchItem(index=0, source="long/path/a.wav", result=classification("hap")),
        BatchItem(index=1, source="b.wav", error=InvalidAudioError("audio file not found: 'b.wav'")),
    ]
    assert format_table(items).splitlines() == [
        "FILE             LABEL  SCORE  ALL SCORES",
        "long/path/a.wav  hap    0.900  hap 0.900",
        "b.wav            ERROR  -      InvalidAudioError: audio file not found: 'b.wav'",
    ]


def test_the_twins_decide_the_same_way_after_each_failure() -> None:
    """One decision for both clients (ClientCore.after_failure): resend after UNAVAILABLE while retries
    last, a liveness probe first where UNAVAILABLE could mean either, and grpc's ValueError of a closed
    channel as the SDK's own error (the sync client alone used to catch it)."""
    from tritonclient.utils import InferenceServerException

    from emotion_client._base import ClientCore, Fail, Retry
    from emotion_client.errors import EmotionClientError

    core = ClientCore(
        ["a:1", "b:2"],
        model_name="emotion",
        model_version="",
        timeout_s=5,
        retry=RetryPolicy(max_retries=1),
        headers=None,
        tls=None,
        verbose=False,
    )
    unavailable = InferenceServerException("connection refused", status=UNAVAILABLE)
    assert isinstance(core.after_failure(unavailable, 0, 0), Retry)
    last = core.after_failure(unavailable, 1, 0)
    assert isinstance(last, Fail) and last.probe_liveness
    closed = core.after_failure(ValueError("Cannot invoke RPC on closed channel!"), 0, 1)
    assert isinstance(closed, Fail) and type(closed.error) is EmotionClientError and not closed.probe_liveness
    refused = core.after_failure(InferenceServerException("bad audio", status="StatusCode.INVALID_ARGUMENT"), 0, 1)
    assert isinstance(refused, Fail) and not refused.probe_liveness
    health = core.endpoint_health(1, True, InferenceServerException("no model", status="StatusCode.NOT_FOUND"))
    assert (health.url, health.live, health.ready) == ("b:2", True, False) and "not loaded" in (health.error or "")
    down = core.endpoint_health(0, unavailable, None)
    assert (down.live, down.ready) == (False, False) and "unavailable" in (down.error or "")
