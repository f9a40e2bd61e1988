"""The built-in transports pass the shared ITransportFactory conformance mixin, loaded by
name through the plugin system."""

from __future__ import annotations

from typing import Any

from jumping import plugin
from jumping.interfaces import ITransportFactory
from jumping.testing.conformance import TransportFactoryTests


class TestUDP(TransportFactoryTests):
    kind = "udp"
    stream = False
    max_payload = 65507  # IPv4: 65535 - 20 (IP header) - 8 (UDP header)

    def make_factory(self) -> Any:
        return plugin.load(ITransportFactory, "udp")


class TestTCP(TransportFactoryTests):
    kind = "tcp"
    stream = True
    max_payload = 65535  # 2-byte length framing

    def make_factory(self) -> Any:
        return plugin.load(ITransportFactory, "tcp")
