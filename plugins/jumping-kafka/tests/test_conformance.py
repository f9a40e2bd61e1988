"""The ``kafka`` sink passes the shared IEventSink mixin (lifecycle included: constructing it
starts no thread and opens no connection), against the real broker."""

from __future__ import annotations

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

    def make_sink(self, max_queue: int | None = None) -> Any:
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "topic": self.topic}
        if max_queue is not None:
            options["max_queue"] = max_queue
        return plugin.load(IEventSink, "kafka", **options)
