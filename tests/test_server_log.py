"""A failed start's message puts the errors Triton logged before the tail that status tables fill."""

from __future__ import annotations

from emotion_build.server.log import start_failure


def test_errors_come_first_even_when_the_tail_has_lost_them() -> None:
    log = "\n".join(
        [
            "I1204 12:00:00 server.cc:1] starting",
            "E1204 12:00:01 model_lifecycle.cc:2] failed to load 'classifier': no such file",
            "W1204 12:00:01 cuda.cc:3] CudaDriverHelper has not been initialized",
            "E1204 12:00:01 cuda.cc:3] CudaDriverHelper has not been initialized",
            *[f"| status row {index} |" for index in range(60)],
            "error: creating server: Internal - failed to load all models",
        ]
    )
    message, tail = start_failure("tritonserver exited with status 1", log)
    lines = message.splitlines()
    assert lines[0] == "tritonserver exited with status 1."
    assert lines[1] == "Errors it logged:"
    assert "failed to load 'classifier'" in lines[2]
    assert lines[3] == "error: creating server: Internal - failed to load all models"
    assert not any("CudaDriverHelper" in line for line in lines[:4])
    assert "failed to load 'classifier'" not in tail
    assert len(tail.splitlines()) == 40 and tail.endswith("failed to load all models")


def test_a_log_without_errors_gives_its_tail() -> None:
    message, tail = start_failure("timed out", "one\ntwo")
    assert message == "timed out.\nLast 2 lines of its log:\none\ntwo"
    assert tail == "one\ntwo"
