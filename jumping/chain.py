"""
The event chain (docs/events.md, "The chain"): one definition, used by the node that writes
events (:mod:`jumping.service.events`) and by everything that verifies them
(``jumpctl audit``, the tests' fixtures).

``prev_hash`` of event *n* is ``BLAKE2s-256(key = K, message = canonical(event n-1))`` in
keyed mode (RFC 7693), hex; event 0 (and the first event after a restart) carries
:data:`ZERO_HASH`. ``K`` is exactly :data:`KEY_BYTES` bytes: a key of any other length is
refused here, on both sides, so a writer and a verifier can never disagree about it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: ``prev_hash`` of seq 0.
ZERO_HASH = "0" * 64
#: The chain key's length (BLAKE2s accepts up to 32; the contract says exactly 32).
KEY_BYTES = 32


def canonical(event: Any) -> bytes:
    """The bytes the chain hashes: keys sorted, separators ``,`` and ``:``, non-ASCII
    escaped (``json.dumps`` defaults otherwise)."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def check_key(key: bytes) -> bytes:
    """``key`` if it is a valid chain key; ValueError otherwise."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        got = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"the event chain key must be {KEY_BYTES} bytes, got {got}")
    return bytes(key)


def chain_hash(key: bytes, event: Any) -> str:
    """The keyed hash of ``event``: what the next event of the same node carries as
    ``prev_hash``."""
    return hash_encoded(check_key(key), canonical(event))


def hash_encoded(key: bytes, encoded: bytes) -> str:
    """:func:`chain_hash` of an event already encoded with :func:`canonical` (``key``
    already checked)."""
    return hashlib.blake2s(encoded, key=key).hexdigest()
