"""tritonserver's log as a start failure reports it: the errors first, then the tail.

A failed start logs status tables of every model and backend after the one line that explains it,
so a plain tail often misses that line."""

from __future__ import annotations

import os
import re
import tempfile
from collections import deque
from pathlib import Path

__all__ = ["start_failure", "temporary_log"]

_LOG_TAIL_LINES = 40
_ERROR_LINES = 20
_ERROR_LINE_CHARS = 1000
_ERROR_LINE = re.compile(r"^E\d{4} |^error: ")
"""Triton's glog error prefix (E + month + day) and its final fatal message."""
_BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)
"""Logged on every CPU-only host; it would crowd out the error that explains a failed start."""


def start_failure(headline: str, log: str) -> tuple[str, str]:
    """The message for a server that did not start (headline, the errors it logged, its last lines)
    and that tail on its own."""
    all_lines = log.splitlines()
    tail_lines = deque(all_lines, maxlen=_LOG_TAIL_LINES)
    tail = "\n".join(tail_lines)
    errors = [
        line[:_ERROR_LINE_CHARS]
        for line in all_lines
        if _ERROR_LINE.match(line) and not any(noise in line for noise in _BENIGN_ERRORS)
    ][-_ERROR_LINES:]
    parts = [headline + "."]
    if errors:
        parts += ["Errors it logged:", *errors]
    parts += [f"Last {len(tail_lines)} lines of its log:", tail]
    return "\n".join(parts), tail


def temporary_log() -> Path:
    handle, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
    os.close(handle)
    return Path(name)
