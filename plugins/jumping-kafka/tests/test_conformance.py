"""The ``kafka`` sink passes the shared IEventSink mixin (lifecycle included: constructing it
starts no thread and opens no connection), against the real broker, with its disk spool
(the default) and without (``spool = false``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Broker

from jumping import plugin
from jumping.interfaces import IEventSink
from jumping.testing.conformance import EventSinkTests


class TestKafkaSink(EventSinkTests):
    name = "kafka"
    settle_timeout = 30.0  # a first send waits for the topic's metadata

    @pytest.fixture(autouse=True)
    def _topic(self, broker: Broker) -> None:
        self.bootstrap = broker.bootstrap
        self.topic = broker.topic("conformance")
        broker.create_topic(self.topic, partitions=1)

    @pytest.fixture(autouse=True)
    def _spool(self, tmp_path: Path) -> None:
        self.spool_dir = str(tmp_path / "spool")

    def options(self) -> dict[str, Any]:
        """The default: spooled to disk."""
        return {"spool_dir": self.spool_dir}

    def make_sink(self, max_queue: int | None = None) -> Any:
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap, "topic": self.topic, **self.options(),
        }  # fmt: skip
        if max_queue is not None:
            options["max_queue"] = max_queue
        return plugin.load(IEventSink, "kafka", **options)


class TestKafkaSinkMemoryOnly(TestKafkaSink):
    """``spool = false``: the bounded in-memory path."""

    def options(self) -> dict[str, Any]:
        return {"spool": False}
