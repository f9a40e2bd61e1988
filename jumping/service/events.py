"""
Turn the core's ``Emit`` outputs into SIEM events (docs/events.md) and fan them out.

Each event gets the base fields, a gap-free per-node ``seq`` and ``prev_hash``: a keyed
BLAKE2s over the previous event's canonical JSON, so a consumer holding the chain key can
detect lost, reordered or altered events (``jumpctl audit`` verifies it). Sinks are
``IEventSink`` plugins; a sink that raises is counted and never stops the others or the
session (invariant 9 in docs/protocol.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from jumping.core.outputs import Emit

SCHEMA = "jumping.event/1"
_V4 = re.compile(r"(?<![\d.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_V6 = re.compile(r"\[([0-9a-fA-F:]+)\]")
_ADDRESS_FIELDS = ("transport_id", "address")


def privacy_filter(mode: str, key: bytes) -> Callable[[str], str]:
    """How addresses inside event strings are shown: full, truncated (/24, /48) or a keyed
    hash (stable per key, so a SIEM can still correlate without learning the address)."""
    if mode == "full":
        return lambda text: text

    def hashed(addr: str) -> str:
        return "h-" + hashlib.blake2s(addr.encode(), key=key[:32], digest_size=6).hexdigest()

    def v4(m: re.Match[str]) -> str:
        if mode == "hash":
            return hashed(m.group(0))
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}.0"

    def v6(m: re.Match[str]) -> str:
        if mode == "hash":
            return "[" + hashed(m.group(1)) + "]"
        return "[" + ":".join(m.group(1).split(":")[:3]) + "::]"

    return lambda text: _V6.sub(v6, _V4.sub(v4, text))


def canonical(event: dict[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def chain_hash(key: bytes, event: dict[str, Any]) -> str:
    return hashlib.blake2s(canonical(event), key=key[:32]).hexdigest()


class EventPipeline:
    def __init__(
        self,
        node_id: str,
        sinks: Sequence[Any],
        chain_key: bytes,
        policy_version: Callable[[], str],
        clock: Callable[[], float],
        address_privacy: str = "full",
    ) -> None:
        self.hide = privacy_filter(address_privacy, chain_key)
        self.privacy = address_privacy
        self.node_id = node_id
        self.sinks = list(sinks)
        self.chain_key = chain_key
        self.policy_version = policy_version
        self.clock = clock
        self.seq = 0
        self.prev_hash = "0" * 64
        self.sink_errors = 0
        self.by_type: dict[str, int] = {}

    def emit(self, e: Emit) -> dict[str, Any]:
        event: dict[str, Any] = {
            "schema": SCHEMA,
            "ts_ms": int(self.clock() * 1000),
            "event_type": e.event_type,
            "session_id": e.session_id,
            "node_id": self.node_id,
            "policy_version": self.policy_version(),
            "state_version": e.state_version,
            "reason_code": e.reason_code,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
        }
        for k, v in e.fields.items():
            if k not in event:
                if self.privacy != "full" and isinstance(v, str) and k.endswith(_ADDRESS_FIELDS):
                    v = self.hide(v)
                event[k] = v
        self.seq += 1
        self.prev_hash = chain_hash(self.chain_key, event)
        self.by_type[e.event_type] = self.by_type.get(e.event_type, 0) + 1
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:
                self.sink_errors += 1
        return event
