"""
The parts of the etcd backend alone, without etcd (no cluster fixture: nothing here starts
one): the record envelope (jumping_etcd.envelope).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jumping_etcd.client import b64, unb64
from jumping_etcd.envelope import (
    current,
    decode,
    encode,
    heartbeat_key,
    heartbeat_seq,
    heartbeat_value,
    prefix_end,
    session_key,
    session_of,
)

PREFIX = "/j/"
A, B, C = "aa01", "bb02", "cc03"
MALFORMED = {"op": "foreign", "record": {"malformed": True}, "w": None}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Reactor:
    """callFromThread and callLater(0) recorded, run by the test with :meth:`run`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *a: Any) -> None:
        self.calls.append((f, a))

    def callLater(self, _delay: float, f: Any, *a: Any) -> None:
        self.calls.append((f, a))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, a in calls:
            f(*a)


# ------------------------------------------------------------------ envelope
def test_envelope_round_trip_keeps_the_record_and_the_writer() -> None:
    record = {"client_public_key": "ab" * 32, "state_version": 7, "owner": "gw-a"}
    value = encode("gw-a", "claim", "n0nce", record)
    assert decode({"value": value}) == {
        "v": 1, "node": "gw-a", "op": "claim", "w": "n0nce", "record": record,
    }  # fmt: skip
    # compact, sorted keys: the same write always stores the same bytes
    assert unb64(value) == json.dumps(json.loads(unb64(value)), separators=(",", ":"),
                                      sort_keys=True).encode()  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        "!!not base64!!",
        b64("not json"),
        b64("[1, 2]"),
        b64(json.dumps({"v": 2, "node": "x", "op": "claim", "w": "n", "record": {}})),
        b64(json.dumps({"v": 1, "node": "x", "op": "claim", "w": "n", "record": "r"})),
        b64(json.dumps({"v": 1, "node": "x", "op": "claim", "w": "n"})),
        b64(b"\xff\xfe"),
        "",
    ],
)
def test_decode_flags_anything_but_an_envelope_as_foreign(value: str) -> None:
    env = decode({"value": value})
    assert env == MALFORMED
    env["record"]["malformed"] = "changed"  # each answer is a fresh dict
    assert decode({"value": value}) == MALFORMED


def test_decode_flags_a_record_without_value() -> None:
    assert decode({}) == MALFORMED


def test_session_key_takes_lowercase_hex_only() -> None:
    assert session_key(PREFIX, "00ff") == "/j/00ff"
    for bad in ("", "00FF", "00ff\n", "../x", "a" * 129, 12, None):
        with pytest.raises(ValueError, match="lowercase hex"):
            session_key(PREFIX, bad)  # type: ignore[arg-type]


def test_key_layout_markers_heartbeats_and_prefix_range() -> None:
    assert session_of(PREFIX, b64("/j/aa01")) == ("aa01", False)
    assert session_of(PREFIX, b64("/j/aa01.conflict")) == ("aa01", True)
    assert heartbeat_key(PREFIX, "gw-a") == "/j/.heartbeat/gw-a"
    assert prefix_end("/j/") == b"/j0"
    assert heartbeat_seq({"value": heartbeat_value("gw-a", 41)}) == 41
    for bad in ("", b64("[]"), b64('{"seq": "41"}'), b64("nope")):
        assert heartbeat_seq({"value": bad}) is None


def test_current_is_the_first_key_a_failed_transaction_read() -> None:
    kv = {"key": b64("/j/aa01"), "mod_revision": "9"}
    r = {"responses": [{"response_range": {}}, {"response_range": {"kvs": [kv]}}]}
    assert current(r) == kv
    assert current({"responses": [{"response_range": {"kvs": []}}]}) is None
    assert current({}) is None
