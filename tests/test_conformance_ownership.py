"""The built-in ``memory`` ownership backend passes the shared IOwnershipBackend mixin."""

from __future__ import annotations

from typing import Any

from jumping import plugin
from jumping.builtin.memory import MemoryStore
from jumping.interfaces import IOwnershipBackend
from jumping.testing.conformance import OwnershipBackendTests


class TestMemoryOwnership(OwnershipBackendTests):
    def make_backends(self, n: int) -> list[Any]:
        store = MemoryStore()  # one store: a cluster inside this process
        return [
            plugin.load(IOwnershipBackend, "memory", node_id=f"node-{i}", store=store)
            for i in range(n)
        ]


def test_a_store_of_its_own_keeps_no_watch_per_session() -> None:
    """The default single gateway: only its own executor writes to its store, so a watch can
    never report another writer. It holds nothing per session (issue 18: 100 000 sessions
    held 100 000 watches, about 300 bytes each); a shared store still watches."""
    from twisted.internet.task import Clock

    from jumping.builtin.memory import MemoryOwnership

    own = Clock()
    alone = MemoryOwnership("gw", clock=own)
    fired: list[object] = []
    w = alone.watch("ab" * 16, lambda *a: fired.append(a))
    token = alone.claim("ab" * 16, {"owner": "gw"}, None).result
    alone.renew("ab" * 16, token, {"owner": "gw"})
    own.advance(0)
    assert alone.store.watchers == {} and fired == []
    w.cancel()
    w.cancel()  # idempotent
    assert alone.store.records["ab" * 16][0] == {"owner": "gw"}
    clock = Clock()
    shared = MemoryOwnership("gw", store=MemoryStore(), clock=clock)
    shared.watch("cd" * 16, lambda *a: fired.append(a))
    shared.claim("cd" * 16, {"owner": "gw"}, None)
    clock.advance(0)
    assert len(shared.store.watchers) == 1 and len(fired) == 1


def test_a_stored_record_is_one_object_that_reads_as_record_token_owner() -> None:
    """Issue 18: a record is stored as one Entry (its token, owner, shared key tuple and
    values in one tuple-like object), not a Record inside a tuple; it still reads as (record, token, owner),
    and it is a copy: changing the caller's dict afterwards changes nothing stored."""
    import gc
    import sys

    from twisted.internet.task import Clock

    from jumping.builtin.memory import Entry, MemoryOwnership, Record

    alone = MemoryOwnership("gw", clock=Clock())
    mine = {"owner": "gw", "handshake_ts_ms": 1_700_000_000_123}
    t1 = alone.claim("ab" * 16, mine, None).result
    alone.claim("cd" * 16, {"owner": "gw", "handshake_ts_ms": 5}, None)
    mine["owner"] = "changed"
    a, b = alone.store.records["ab" * 16], alone.store.records["cd" * 16]
    assert type(a) is Entry and a.keys is b.keys, "records of one layout share their keys"
    record, token, owner = a
    assert type(record) is Record and dict(record) == {
        "owner": "gw",
        "handshake_ts_ms": 1_700_000_000_123,
    }
    assert (token, owner, len(a)) == (t1, "gw", 3)
    # one object: token, owner, the shared keys and the values in its own slots (no values
    # tuple of its own, no Record kept)
    assert [r for r in gc.get_referents(a) if isinstance(r, tuple)] == [a.keys]
    assert sys.getsizeof(a) <= sys.getsizeof(()) + 8 * (3 + len(record))
    assert a != alone.store.pack(dict(record), token, owner), "entries compare by identity"
    assert alone.get("ab" * 16).result == (
        {"owner": "gw", "handshake_ts_ms": 1_700_000_000_123},
        t1,
    )
    t2 = alone.renew("ab" * 16, t1, {"owner": "gw", "handshake_ts_ms": 7}).result
    assert (
        alone.store.records["ab" * 16][1] == t2 != t1
        and alone.store.records["ab" * 16][0]["handshake_ts_ms"] == 7
    )
