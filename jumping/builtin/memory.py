"""
``memory`` ownership backend: one process, no setup, the default (docs/protocol.md).

Implements the same compare-and-swap and fencing semantics as the etcd backend, so the
shared conformance tests hold for both. Several backends can share one
:class:`MemoryStore` to model a cluster inside one test process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from jumping.errors import OwnershipConflict
from jumping.interfaces import IOwnershipBackend

#: distinct record layouts (key tuples) a store shares between its records
KEYSETS = 64


class Record(Mapping[str, Any]):
    """A stored record, read-only: its values in a tuple behind a key tuple that records of
    the same layout share (about 100 bytes less than a dict per session: a gateway holds one
    per session, issue 18)."""

    __slots__ = ("_keys", "_values")

    def __init__(self, keys: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self._keys = keys
        self._values = values

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[self._keys.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Record({dict(self)!r})"


class Entry(tuple):  # type: ignore[type-arg]
    """One stored record with its fencing token and its owner, in one object (issue 18: a
    gateway holds one per session). Its items are ``(token, owner, keys, *values)``, one
    tuple of 3 + n slots: an object holding a separate values tuple was 48 bytes more (a
    Record inside a (record, token, owner) tuple, 96 more).

    It reads like that triple, not like its items: ``entry[0]`` is the record (a
    :class:`Record` view), ``entry[1]`` the token, ``entry[2]`` the owner's node id;
    ``len`` is 3 and unpacking gives the three. Entries compare by identity."""

    __slots__ = ()

    def __new__(
        cls, keys: tuple[str, ...], values: tuple[Any, ...], token: int, owner: str
    ) -> Entry:
        return tuple.__new__(cls, (token, owner, keys, *values))

    @property
    def token(self) -> int:
        return tuple.__getitem__(self, 0)  # type: ignore[no-any-return]

    @property
    def owner(self) -> str:
        return tuple.__getitem__(self, 1)  # type: ignore[no-any-return]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple.__getitem__(self, 2)  # type: ignore[no-any-return]

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple.__getitem__(self, slice(3, None))  # type: ignore[no-any-return]

    def __getitem__(self, i: Any) -> Any:
        if i == 0:
            return Record(self.keys, self.values)
        if i == 1 or i == 2:
            return tuple.__getitem__(self, i - 1)
        raise IndexError(i)

    def __len__(self) -> int:
        return 3

    def __iter__(self) -> Iterator[Any]:
        return iter((self[0], self.token, self.owner))

    __eq__ = object.__eq__  # type: ignore[assignment]
    __ne__ = object.__ne__  # type: ignore[assignment]
    __hash__ = object.__hash__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Entry({dict(self[0])!r}, {self.token}, {self.owner!r})"


class MemoryStore:
    def __init__(self, max_sessions: int = 1_000_000) -> None:
        #: session id -> its Entry (a test may put a (record, token, owner) tuple)
        self.records: dict[str, Any] = {}
        self.tokens = itertools.count(1)
        self.watchers: dict[str, list[_Watch]] = {}
        self.max_sessions = max_sessions
        self._keysets: dict[tuple[str, ...], tuple[str, ...]] = {}

    def pack(self, record: Mapping[str, Any], token: int, owner: str) -> Entry:
        """A copy of ``record`` as stored (the caller may change its own afterwards), with
        its token and owner."""
        keys = tuple(record)
        shared = self._keysets.get(keys)
        if shared is None:
            shared = keys
            if len(self._keysets) < KEYSETS:
                self._keysets[keys] = keys
        return Entry(shared, tuple(record.values()), token, owner)

    def notify(self, session_id: str, token: int | None) -> None:
        for w in list(self.watchers.get(session_id, ())):
            w.fire(session_id, token)


class _Watch:
    def __init__(
        self,
        store: MemoryStore,
        session_id: str,
        callback: Callable[..., Any],
        call_later: Callable[..., Any],
    ) -> None:
        self.store, self.session_id, self.callback, self.call_later = (
            store,
            session_id,
            callback,
            call_later,
        )
        self.active = True

    def fire(self, session_id: str, token: int | None) -> None:
        if self.active:
            self.call_later(0, self._deliver, session_id, token)

    def _deliver(self, session_id: str, token: int | None) -> None:
        if self.active:
            self.callback(session_id, token)

    def cancel(self) -> None:
        self.active = False
        lst = self.store.watchers.get(self.session_id, [])
        if self in lst:
            lst.remove(self)
        if not lst:
            self.store.watchers.pop(self.session_id, None)


class _Unwatched:
    """The watch of a store nobody else writes to: never fires, and cancelling it does
    nothing, so the caller need not keep it (``inert``)."""

    __slots__ = ()
    inert = True

    def cancel(self) -> None:
        pass


UNWATCHED = _Unwatched()


@implementer(IOwnershipBackend)
class MemoryOwnership:
    def __init__(
        self,
        node_id: str = "node",
        store: MemoryStore | None = None,
        clock: Any = None,
        max_sessions: int = 1_000_000,
    ) -> None:
        if not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(
                f"memory: max_sessions must be a positive integer, got {max_sessions!r}"
            )
        self.node_id = node_id
        #: several nodes share ownership only through a store passed in (tests): a node
        #: with its own store can never be asked to take a session over
        self.shared = store is not None
        #: an in-process store is always reachable
        self.healthy = True
        self.store = store or MemoryStore(max_sessions)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    def claim(
        self, session_id: str, record: dict[str, Any], expected_token: int | None
    ) -> defer.Deferred[int]:
        st = self.store
        cur = st.records.get(session_id)
        if expected_token is None and cur is not None:
            return defer.fail(OwnershipConflict(f"session {session_id} is owned by {cur[2]}"))
        if expected_token is not None and (cur is None or cur[1] != expected_token):
            return defer.fail(
                OwnershipConflict(f"session {session_id}: stale fencing token {expected_token}")
            )
        if cur is None and len(st.records) >= st.max_sessions:
            return defer.fail(OwnershipConflict("memory ownership store is full"))
        token = next(st.tokens)
        st.records[session_id] = st.pack(record, token, self.node_id)
        st.notify(session_id, token)
        return defer.succeed(token)

    def renew(self, session_id: str, token: int, record: dict[str, Any]) -> defer.Deferred[int]:
        st = self.store
        cur = st.records.get(session_id)
        if cur is None or cur[1] != token:
            return defer.fail(
                OwnershipConflict(f"session {session_id}: token {token} is no longer current")
            )
        new = next(st.tokens)
        st.records[session_id] = st.pack(record, new, self.node_id)
        st.notify(session_id, new)  # the token changed: watchers holding the old one must know
        return defer.succeed(new)

    def release(self, session_id: str, token: int) -> defer.Deferred[None]:
        st = self.store
        cur = st.records.get(session_id)
        if cur is not None and cur[1] == token:
            del st.records[session_id]
            st.notify(session_id, None)
        return defer.succeed(None)

    def get(self, session_id: str) -> defer.Deferred[tuple[dict[str, Any], int] | None]:
        cur = self.store.records.get(session_id)
        return defer.succeed(None if cur is None else (dict(cur[0]), cur[1]))

    def watch(self, session_id: str, callback: Callable[..., Any]) -> _Watch | _Unwatched:
        if not self.shared:
            # a store of its own has one writer, this node's ownership executor: no record
            # can change behind it, so there is nothing to watch (and 100 000 sessions would
            # otherwise hold 100 000 watches, about 300 bytes each)
            return UNWATCHED
        w = _Watch(self.store, session_id, callback, self.clock.callLater)
        self.store.watchers.setdefault(session_id, []).append(w)
        return w

    def start(self) -> None:
        """Nothing to connect nor to start: ready at once (lifecycle phase 3)."""
        return None

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)
