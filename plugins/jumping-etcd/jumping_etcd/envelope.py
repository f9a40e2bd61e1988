"""
The records the etcd backend stores, and where: key layout and value encoding. Pure
functions, no I/O, no state: the lease keeper, the watch and the facade
(:mod:`jumping_etcd.backend`) share them, and the tests check them without etcd.

- A session's key is ``<prefix><session_id>`` (the id in lowercase hex); its split-brain
  marker is that key plus :data:`MARKER`; each node's watch-liveness key is
  ``<prefix>`` + :data:`HEARTBEAT` + ``<node_id>``. One prefix watch covers all three.
- A session's value is a JSON envelope ``{"v": 1, "node": writer node_id, "op": "claim" |
  "renew" | "conflict", "w": write nonce, "record": {...}}`` (base64, as the JSON gateway
  carries bytes). Anything else found under the prefix was not written by a backend of
  this version: :func:`decode` flags it ``op: "foreign"``, ``record: {"malformed": True}``.
- A heartbeat's value is ``{"node": node_id, "seq": n}`` (:mod:`jumping_etcd.liveness`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from jumping_etcd.client import b64, unb64

SID = re.compile(r"[0-9a-f]{1,128}\Z")
NODE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
MARKER = ".conflict"  # suffix of the split-brain marker key next to a session's key
HEARTBEAT = ".heartbeat/"  # <prefix>.heartbeat/<node_id>: each node's watch-liveness key


def prefix_end(prefix: str) -> bytes:
    """The ``range_end`` of a prefix range: the prefix with its last byte incremented."""
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b)


def session_key(prefix: str, session_id: str) -> str:
    """``<prefix><session_id>``; :class:`ValueError` if the id is not lowercase hex."""
    if not isinstance(session_id, str) or not SID.match(session_id):
        raise ValueError(f"etcd: session id must be lowercase hex, got {session_id!r}")
    return prefix + session_id


def heartbeat_key(prefix: str, node_id: str) -> str:
    return prefix + HEARTBEAT + node_id


def session_of(prefix: str, key: str) -> tuple[str, bool]:
    """The session id a watched key (base64, as the gateway sends it) belongs to, and
    whether the key is that session's split-brain marker."""
    sid = unb64(key).decode(errors="replace")[len(prefix) :]
    if sid.endswith(MARKER):
        return sid[: -len(MARKER)], True
    return sid, False


def encode(node_id: str, op: str, nonce: str, record: Any) -> str:
    """The stored value (base64 of the JSON envelope) of a write by ``node_id``."""
    env = {"v": 1, "node": node_id, "op": op, "w": nonce, "record": record}
    return b64(json.dumps(env, separators=(",", ":"), sort_keys=True))


def decode(kv: dict[str, Any]) -> dict[str, Any]:
    """The stored JSON envelope of ``kv``; anything else (written by someone else) is
    flagged."""
    try:
        env = json.loads(unb64(kv.get("value", "")))
    except ValueError:
        env = None
    if not isinstance(env, dict) or env.get("v") != 1 or not isinstance(env.get("record"), dict):
        return {"op": "foreign", "record": {"malformed": True}, "w": None}
    return env


def current(r: dict[str, Any]) -> dict[str, Any] | None:
    """The first key a transaction's failure branch read (its ``request_range``), if any."""
    for resp in r.get("responses", ()):
        kvs = resp.get("response_range", {}).get("kvs")
        if kvs:
            return dict(kvs[0])
    return None


def heartbeat_value(node_id: str, seq: int) -> str:
    return b64(json.dumps({"node": node_id, "seq": seq}))


def heartbeat_seq(kv: dict[str, Any]) -> int | None:
    """The sequence number of a heartbeat record; None if it is not one."""
    try:
        seq = json.loads(unb64(kv.get("value", ""))).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None
