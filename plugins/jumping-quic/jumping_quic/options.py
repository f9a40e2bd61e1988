"""
The ``quic`` plugin's options (the ``options`` table of a ``[[listen]]`` or an endpoint),
validated at once: a bad value is a ``ValueError`` naming the option, before anything opens.

Timing settings and why (Jumping decides when a path is dead and when to jump; QUIC must not
decide it first):

- ``idle_timeout_s`` (60): QUIC closes a connection that heard nothing for this long. It
  must stay well above everything Jumping does on its own clock: an idle session sends its
  NAT keepalive every ``nat_keepalive_s`` (25 s), a busy one a heartbeat every 500 ms and
  declares the path dead after ``dead_after_ms`` (3 s) or a probe timeout. At 60 s the idle
  timeout only frees connections of peers that are gone for good; at 30 s or more it never
  races the keepalive. (aioquic takes at least 3 PTO anyway.)
- no QUIC keep-alive PINGs: Jumping's heartbeats and keepalives are the traffic that keeps
  NAT bindings and the idle timer fresh, so there is one liveness mechanism, not two.
- ``connect_timeout_s`` (5): a QUIC handshake that has not completed by then fails the
  path's ``connect`` (the node retries every second), as a TCP connect does.
- ``handshake_timeout_s`` (10, gateway): a connection on which the node has not
  authenticated a Jumping packet by then is closed (as the ``tcp`` listener does with its
  unauthenticated connections); a client's Jumping handshake takes one round trip plus its
  retries, well inside it.
- loss recovery and congestion control stay QUIC's (they are what makes the path look like
  QUIC to a middlebox); QUIC never retransmits DATAGRAM frames, so the inner TCP's own
  recovery is not doubled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jumping.tls import check_pin

SMALLEST_MAX_DATAGRAM_SIZE = 1200  # RFC 9000 section 14


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"quic: {name} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _str(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError(f"quic: {name} must be a non-empty string, got {v!r}")
    return v


@dataclass(frozen=True)
class QuicOptions:
    # gateway (listen)
    certificate_file: str | None = None
    private_key_file: str | None = None
    max_connections: int = 4096
    max_handshakes: int = 256
    max_per_source: int = 64
    max_unauthenticated: int = 1024
    handshake_timeout_s: int = 10
    retry: str = "auto"
    # client (connect)
    pin_sha256: tuple[str, ...] = ()
    ca_file: str | None = None
    server_name: str | None = None
    connect_timeout_s: int = 5
    # both
    max_datagram_size: int = 1472
    max_queue: int = 256
    idle_timeout_s: int = 60
    congestion_control: str = "reno"
    buffer_bytes: int = 4 * 1024 * 1024

    @classmethod
    def parse(cls, **o: Any) -> QuicOptions:
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(o) - known)
        if extra:
            raise ValueError(
                f"quic: unknown option(s) {', '.join(extra)} (allowed: {', '.join(sorted(known))})"
            )
        pins = o.get("pin_sha256", ())
        if isinstance(pins, str):
            pins = (pins,)
        if not isinstance(pins, (list, tuple)):
            raise ValueError(f"quic: pin_sha256 must be a pin or a list of pins, got {pins!r}")
        retry = o.get("retry", "auto")
        if retry is True or retry is False:
            retry = "always" if retry else "never"
        if retry not in ("auto", "always", "never"):
            raise ValueError(f"quic: retry must be 'auto', true or false, got {retry!r}")
        cc = o.get("congestion_control", "reno")
        if cc not in ("reno", "cubic"):
            raise ValueError(f"quic: congestion_control must be 'reno' or 'cubic', got {cc!r}")
        cert, key = (
            _str("certificate_file", o.get("certificate_file")),
            _str("private_key_file", o.get("private_key_file")),
        )
        if (cert is None) != (key is None):
            raise ValueError("quic: certificate_file and private_key_file go together")
        opts = cls(
            certificate_file=cert,
            private_key_file=key,
            max_connections=_int("max_connections", o.get("max_connections", 4096), 1, 1_000_000),
            max_handshakes=_int("max_handshakes", o.get("max_handshakes", 256), 1, 100_000),
            max_per_source=_int("max_per_source", o.get("max_per_source", 64), 1, 1_000_000),
            max_unauthenticated=_int(
                "max_unauthenticated", o.get("max_unauthenticated", 1024), 1, 1_000_000
            ),
            handshake_timeout_s=_int(
                "handshake_timeout_s", o.get("handshake_timeout_s", 10), 1, 3600
            ),
            retry=retry,
            pin_sha256=tuple(check_pin(p, "quic: pin_sha256") for p in pins),
            ca_file=_str("ca_file", o.get("ca_file")),
            server_name=_str("server_name", o.get("server_name")),
            connect_timeout_s=_int("connect_timeout_s", o.get("connect_timeout_s", 5), 1, 300),
            max_datagram_size=_int(
                "max_datagram_size",
                o.get("max_datagram_size", 1472),
                SMALLEST_MAX_DATAGRAM_SIZE,
                65527,
            ),
            max_queue=_int("max_queue", o.get("max_queue", 256), 1, 65536),
            idle_timeout_s=_int("idle_timeout_s", o.get("idle_timeout_s", 60), 30, 3600),
            congestion_control=cc,
            buffer_bytes=_int("buffer_bytes", o.get("buffer_bytes", 4 << 20), 4096, 1 << 30),
        )
        if opts.pin_sha256 and opts.ca_file:
            raise ValueError("quic: use either pin_sha256 or ca_file, not both")
        return opts
