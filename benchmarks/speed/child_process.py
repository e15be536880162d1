"""A measured system in a spawned process of its own: its own threads and allocator, spoken to over a pipe."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any, Self


class ChildProcess:
    """Starts `target(child_connection, *args)` and relays its answers; an exception the child sends is
    raised here, and a child that dies is named with its exit code."""

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        context = multiprocessing.get_context("spawn")
        self._name = name
        self._connection, child = context.Pipe()
        self._process = context.Process(target=target, args=(child, *args), daemon=True)
        self._process.start()
        child.close()

    def _receive(self) -> Any:
        try:
            message = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"{self._name}: its process died (exit code {self._process.exitcode})") from None
        if isinstance(message, BaseException):
            raise message
        return message

    def close(self) -> None:
        if self._process.is_alive():
            self._connection.send(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
