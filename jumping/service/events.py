"""
Turn the core's ``Emit`` outputs into SIEM events (docs/events.md) and fan them out.

Each event gets the base fields, the node process's ``boot_id`` (random, one per start), a
gap-free per-node ``seq`` and ``prev_hash``: a keyed
BLAKE2s over the previous event's canonical JSON, so a consumer holding the chain key can
detect lost, reordered or altered events (``jumpctl audit`` verifies it). Addresses are
rendered per ``[events] address_privacy`` first; the keyed hash uses a separate address key,
so the chain key given to an auditor reveals no address. Sinks are
``IEventSink`` plugins; a sink that raises is counted and never stops the others or the
session (invariant 9 in docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from jumping.chain import ZERO_HASH, canonical, chain_hash, check_key, hash_encoded
from jumping.core.outputs import Emit
from jumping.interfaces import IEncodedEventSink

__all__ = [
    "SCHEMA",
    "ADDRESS_PRIVACY",
    "EventPipeline",
    "address_filter",
    "canonical",
    "chain_hash",
]

SCHEMA = "jumping.event/1"
ADDRESS_PRIVACY = ("full", "truncated", "hash")
# an IPv6 address in brackets, or a dotted IPv4 address; either with an optional :port
_ADDRESS = re.compile(
    r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::\d{1,5})?"
    r"|(?<![\w.])(?P<v4>\d{1,3}(?:\.\d{1,3}){3})(?::\d{1,5})?(?![\w.])"
)
_ADDRESS_FIELDS = ("transport_id", "address")


def address_filter(mode: str, address_key: bytes | None = None) -> Callable[[str], str]:
    """How addresses inside event strings are shown (docs/events.md#address-privacy):

    - ``full``: unchanged (``203.0.113.77:40000``, ``[2001:db8::9]:40000``);
    - ``truncated``: the network, port dropped: IPv4 /24 (``203.0.113.0/24``), IPv6 /48
      (``2001:db8:5::/48``);
    - ``hash``: ``h:`` + the first 16 hex digits of BLAKE2s-256 keyed with the node's
      *address key* (derived from the node secret, never the chain key) over the address's
      4 or 16 bytes, port dropped: stable per key, so a SIEM can correlate without learning
      the address, and without the key nobody can enumerate the 2^32 IPv4 addresses back.
    """
    if mode not in ADDRESS_PRIVACY:
        raise ValueError(
            f"address_privacy must be one of {', '.join(ADDRESS_PRIVACY)}, got {mode!r}"
        )
    if mode == "full":
        return lambda text: text
    if mode == "hash" and (address_key is None or len(address_key) != 32):
        raise ValueError('address_privacy = "hash" needs a 32-byte address key (a node secret)')

    def render(text: str) -> str | None:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        if mode == "hash":
            return "h:" + hashlib.blake2s(ip.packed, key=address_key or b"").hexdigest()[:16]
        bits = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))

    def one(m: re.Match[str]) -> str:
        return render(m.group("v6") or m.group("v4")) or m.group(0)

    def hide(text: str) -> str:
        whole = render(text.strip("[]"))  # a bare address (an IPv6 one has no brackets)
        return whole if whole is not None else _ADDRESS.sub(one, text)

    return hide


class EventPipeline:
    def _hide_prefix(self, prefix: str) -> str:
        """A source prefix (``a.b.c.d/32``, ``[v6]/64``) under address privacy: truncated to
        the privacy network (never finer than the prefix), or hashed with its length."""
        base, _, bits = prefix.partition("/")
        shown = self.hide(base)
        return shown if "/" in shown or not bits else f"{shown}/{bits}"

    def __init__(
        self,
        node_id: str,
        sinks: Sequence[Any],
        chain_key: bytes,
        policy_version: Callable[[], str],
        clock: Callable[[], float],
        address_privacy: str = "full",
        address_key: bytes | None = None,
        boot_id: str | None = None,
    ) -> None:
        #: this start of the node (docs/events.md, "Event identity"): with ``seq`` it names
        #: every event uniquely, across restarts, so (node_id, boot_id, seq) is the identity
        #: consumers deduplicate on
        self.boot_id = boot_id if boot_id is not None else os.urandom(16).hex()
        if not re.fullmatch(r"[0-9a-f]{32}", self.boot_id):
            raise ValueError(f"boot_id must be 32 lowercase hex digits, got {self.boot_id!r}")
        self.hide = address_filter(address_privacy, address_key)
        self.privacy = address_privacy
        self.node_id = node_id
        self.sinks = list(sinks)
        self._seen: list[Any] = []
        self._deliver: tuple[tuple[bool, Any], ...] = ()
        self.chain_key = check_key(chain_key)
        self.policy_version = policy_version
        self.clock = clock
        self.seq = 0
        self.prev_hash = ZERO_HASH
        self.sink_errors = 0
        self.by_type: dict[str, int] = {}

    def _deliveries(self) -> tuple[tuple[bool, Any], ...]:
        """Each sink with whether it takes the encoded bytes (an ``IEncodedEventSink``),
        decided once per change of ``sinks`` (a list others may change), not per event."""
        sinks = self.sinks
        if sinks != self._seen:  # a list compared item by item, identity first: ~50 ns
            self._seen = list(sinks)
            self._deliver = tuple((IEncodedEventSink.providedBy(x), x) for x in sinks)
        return self._deliver

    def emit(self, e: Emit) -> dict[str, Any]:
        event: dict[str, Any] = {
            "schema": SCHEMA,
            "ts_ms": int(self.clock() * 1000),
            "event_type": e.event_type,
            "session_id": e.session_id,
            "node_id": self.node_id,
            "boot_id": self.boot_id,
            "policy_version": self.policy_version(),
            "state_version": e.state_version,
            "reason_code": e.reason_code,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
        }
        for k, v in e.fields.items():
            if k not in event:
                if self.privacy != "full":
                    if isinstance(v, str) and k.endswith(_ADDRESS_FIELDS):
                        v = self.hide(v)
                    elif k == "top_sources" and isinstance(v, list):
                        v = [{**t, "address": self._hide_prefix(str(t.get("address")))} for t in v]
                event[k] = v
        self.seq += 1
        encoded = canonical(event)  # once: for the chain, and for the sinks that write it
        self.prev_hash = hash_encoded(self.chain_key, encoded)
        self.by_type[e.event_type] = self.by_type.get(e.event_type, 0) + 1
        for encoded_too, sink in self._deliveries():
            try:
                if encoded_too:
                    sink.emit_encoded(event, encoded)
                else:
                    sink.emit(event)
            except Exception:
                self.sink_errors += 1
        return event
