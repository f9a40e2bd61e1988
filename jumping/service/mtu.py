"""
The tunnel MTU fits the smallest path (docs/plugins.md#mtu).

A session may jump to any of its candidate paths at any moment, so a packet the TUN device
accepted must fit every one of them: a path that carries smaller datagrams than the others
(QUIC: one DATAGRAM frame inside one QUIC packet) would otherwise black-hole full-size
packets right after a jump, until TCP's path-MTU probing noticed. Transports say what their
paths carry whole through :class:`~jumping.interfaces.IPathMTU` (``max_datagram``); a
transport without it carries anything up to 65535 bytes.

- ``[tun] mtu`` not set: the node takes 1420 or less, so that the inner packet plus Jumping's
  overhead fits the smallest ``max_datagram`` of its transports (logged);
- ``[tun] mtu`` set too big for one of them: the node refuses to start, naming the transport
  and the largest MTU that fits;
- a path that turns out smaller than announced once it is up (the peer advertised a lower
  limit) is refused as a candidate, never used to black-hole packets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from jumping.core import wire

#: bytes Jumping adds to an inner packet (header + AEAD tag)
OVERHEAD = wire.OVERHEAD
MIN_MTU = 576
MIN_MTU_IPV6 = 1280


class MTUError(ValueError):
    """The configured MTU cannot be carried; the message is one line for the operator."""


def limit_of(obj: object) -> int | None:
    """``max_datagram`` of a transport factory or path, None if it declares none."""
    v = getattr(obj, "max_datagram", None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def fit(mtu: int, auto: bool, address: str, limits: Iterable[tuple[str, int | None]]) -> int:
    """The TUN MTU to use, given ``(what, max_datagram)`` for every transport of the node.

    :raise MTUError: an explicit ``mtu`` does not fit, or nothing at or above the minimum does.
    """
    known = [(limit, what) for what, limit in limits if limit is not None]
    if not known:
        return mtu
    smallest, what = min(known)
    fits = smallest - OVERHEAD
    if mtu <= fits:
        return mtu
    floor = MIN_MTU_IPV6 if ipaddress.ip_interface(address).version == 6 else MIN_MTU
    if fits < floor:
        raise MTUError(
            f"{what} carries datagrams of at most {smallest} bytes: inner packets of {fits} "
            f"bytes, below the minimum MTU {floor}; raise that transport's max_datagram_size"
        )
    if not auto:
        raise MTUError(
            f"[tun] mtu = {mtu} does not fit {what}: it carries datagrams of at most "
            f"{smallest} bytes, so inner packets of at most {fits} (Jumping adds {OVERHEAD}); "
            f"set [tun] mtu = {fits} or less, or leave it out to have it chosen "
            "(docs/plugins.md#mtu)"
        )
    return fits
