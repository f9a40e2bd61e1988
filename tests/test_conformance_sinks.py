"""The built-in ``jsonl`` and ``syslog`` event sinks pass the shared IEventSink mixin."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jumping import plugin
from jumping.interfaces import IEventSink
from jumping.testing.conformance import EventSinkTests


class TestJSONLines(EventSinkTests):
    name = "jsonl"

    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.path = tmp_path / "events.jsonl"

    def make_sink(self, max_queue: int | None = None) -> Any:
        options: dict[str, Any] = {"path": str(self.path)}
        if max_queue is not None:
            options["max_queue"] = max_queue
        return plugin.load(IEventSink, "jsonl", **options)

    def destination_count(self) -> int | None:
        if not self.path.exists():
            return 0
        return len(self.path.read_bytes().splitlines())


class TestSyslog(EventSinkTests):
    name = "syslog"

    @pytest.fixture(autouse=True)
    def _collector(self) -> Iterator[None]:
        """A syslog collector: a UDP socket on loopback, read without blocking."""
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        self.rx = rx
        self.received = 0
        try:
            yield
        finally:
            rx.close()

    def make_sink(self, max_queue: int | None = None) -> Any:
        options: dict[str, Any] = {"address": f"127.0.0.1:{self.rx.getsockname()[1]}"}
        if max_queue is not None:
            options["max_queue"] = max_queue
        return plugin.load(IEventSink, "syslog", **options)

    def destination_count(self) -> int | None:
        while True:
            try:
                msg = self.rx.recv(65535)
            except BlockingIOError:
                return self.received
            assert msg.startswith(b"<")
            self.received += 1
