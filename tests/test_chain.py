"""The event chain has one definition (jumping.chain), used by the node's event pipeline and
by ``jumpctl audit``; a key that is not exactly 32 bytes is refused on both sides (the writer
used to truncate a longer key silently while the verifier refused it)."""

from __future__ import annotations

import hashlib

import pytest

from jumping import chain
from jumping.audit import Auditor, audit_events
from jumping.core.outputs import Emit
from jumping.service import events as service_events
from jumping.service.events import EventPipeline


def _pipeline(key: bytes) -> EventPipeline:
    return EventPipeline("gw1", [], key, lambda: "1", lambda: 1800000000.0)


def _history(p: EventPipeline, n: int = 4) -> list[dict]:
    return [
        p.emit(Emit("POLICY_RELOADED", None, 0, None, {"previous_policy_version": str(i)}))
        for i in range(n)
    ]


def test_writer_and_verifier_share_one_function() -> None:
    assert service_events.chain_hash is chain.chain_hash
    assert service_events.canonical is chain.canonical
    from jumping.audit import engine

    assert engine.chain_hash is chain.chain_hash


def test_the_definition_is_the_documented_one() -> None:
    key = bytes(range(32))
    events = _history(_pipeline(key))
    assert events[0]["prev_hash"] == chain.ZERO_HASH
    for prev, e in zip(events, events[1:], strict=False):
        data = hashlib.blake2s(chain.canonical(prev), key=key).hexdigest()
        assert e["prev_hash"] == data
    assert audit_events(events, key).ok


@pytest.mark.parametrize("length", [0, 16, 31, 33, 40, 64])
def test_a_key_of_another_length_is_refused_by_writer_and_verifier(length: int) -> None:
    key = bytes(range(length))
    with pytest.raises(ValueError, match="32 bytes"):
        _pipeline(key)
    with pytest.raises(ValueError, match="32 bytes"):
        Auditor(key)
    with pytest.raises(ValueError, match="32 bytes"):
        chain.chain_hash(key, {})


def test_a_longer_key_is_not_silently_its_prefix() -> None:
    """The old writer hashed with key[:32]: a 40-byte key 'worked' for the writer and then
    verified only with its first 32 bytes. Now neither side accepts it."""
    long_key = bytes(range(40))
    with pytest.raises(ValueError):
        _pipeline(long_key)
    events = _history(_pipeline(long_key[:32]))
    assert audit_events(events, long_key[:32]).ok
    assert "CHAIN" in audit_events(events, bytes(32)).by_check()


def test_sinks_that_take_the_encoding_get_the_bytes_the_chain_hashed(tmp_path) -> None:  # noqa: ANN001
    """Each event is encoded once: an IEncodedEventSink gets the canonical bytes the next
    event's prev_hash is the hash of; a plain IEventSink gets the dict; the JSONL sink
    writes exactly those bytes, one line each, and the file audits clean."""
    import json
    import time

    from zope.interface import implementer

    from jumping.builtin.jsonl import JSONLinesSink
    from jumping.interfaces import IEncodedEventSink, IEventSink

    @implementer(IEventSink, IEncodedEventSink)
    class Both:
        def __init__(self) -> None:
            self.got: list[tuple[dict, bytes]] = []

        def emit(self, event: dict) -> None:
            raise AssertionError("emit_encoded is called instead")

        def emit_encoded(self, event: dict, encoded: bytes) -> None:
            self.got.append((event, encoded))

    @implementer(IEventSink)
    class Plain:
        def __init__(self) -> None:
            self.got: list[dict] = []

        def emit(self, event: dict) -> None:
            self.got.append(event)

    key = bytes(range(32))
    both, plain = Both(), Plain()
    jsonl = JSONLinesSink(str(tmp_path / "events.jsonl"))
    jsonl.start()
    p = EventPipeline("gw1", [both, plain, jsonl], key, lambda: "1", lambda: 1800000000.0)
    events = _history(p, 5)
    assert [e for e, _ in both.got] == events == plain.got
    for (event, encoded), following in zip(both.got, events[1:], strict=False):
        assert encoded == chain.canonical(event)
        assert following["prev_hash"] == hashlib.blake2s(encoded, key=key).hexdigest()
    deadline = time.monotonic() + 5
    while jsonl.delivered < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    jsonl.close()
    raw = (tmp_path / "events.jsonl").read_bytes()
    assert raw == b"".join(encoded + b"\n" for _, encoded in both.got)
    report = audit_events([json.loads(line) for line in raw.splitlines()], key)
    assert report.ok and report.chain_verified, report.violations

    # which sinks take the bytes is decided once per change of the list, not per event: a
    # sink added, or put in another's place, later is served by its own kind from then on
    late, swapped = Both(), Plain()
    p.sinks.append(late)
    p.sinks[0] = swapped
    more = _history(p, 2)
    assert [e for e, _ in late.got] == more[-2:] == swapped.got
    assert len(both.got) == 5
