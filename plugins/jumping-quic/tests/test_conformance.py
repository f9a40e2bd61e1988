"""The ``quic`` transport passes the transport conformance mixin every transport runs."""

from __future__ import annotations

from typing import Any

from quichelp import factory

from jumping.testing.conformance import TransportFactoryTests


class TestQuicConformance(TransportFactoryTests):
    kind = "quic"
    stream = True  # a connection: refused connects fail, a peer's close is reported
    max_payload = 1442  # one DATAGRAM frame in one 1472-byte QUIC packet

    def make_factory(self) -> Any:
        return factory()
