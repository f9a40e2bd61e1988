"""
Conformance test mixins, one per plugin interface (in the style of tahoe-lafs).

Every implementation of a :mod:`jumping.interfaces` contract, built in or third party,
runs the mixin for its interface: subclass it in a ``Test*`` class, provide the factory
method the mixin documents, and pytest collects every ``test_*`` method::

    from jumping import plugin
    from jumping.interfaces import ITransportFactory
    from jumping.testing.conformance import TransportFactoryTests

    class TestMyTransport(TransportFactoryTests):
        kind = "quic"
        stream = False

        def make_factory(self):
            return plugin.load(ITransportFactory, "quic")

The mixins need ``pytest`` and ``pytest-twisted`` (the ``test`` extra) and run with the
real reactor (``--reactor=default``): transports use loopback sockets, ownership backends
may talk to a real cluster. Waits are bounded polls, never bare sleeps; every socket,
listener, backend and sink a test opens is closed before it ends.

The mixins assume only what the interfaces document: fencing tokens are ints that
strictly increase (not consecutive ones), watch callbacks may take a while to arrive,
sink counters settle eventually.
"""

from __future__ import annotations

import copy
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from jumping.errors import OwnershipConflict
from jumping.interfaces import (
    IBatchDatagramReceiver,
    IBatchTransport,
    IDatagramReceiver,
    IEventSink,
    IListener,
    IOwnershipBackend,
    IProvisionalPath,
    IRateLimitPolicy,
    ITransport,
    ITransportFactory,
)
from jumping.testing.lifecycle import footprint, started_since, threads_since

__all__ = [
    "BatchReceiver",
    "EventSinkTests",
    "OwnershipBackendTests",
    "RateLimitPolicyTests",
    "Receiver",
    "TransportFactoryTests",
    "wait_until",
]

WAIT_S = 5.0  # upper bound of every poll in this module


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def wait_until(cond: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``cond`` every 10 ms on the reactor until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(_reactor(), 0.01, lambda: None)


async def _turns(seconds: float) -> None:
    """Let the reactor run for ``seconds`` (a grace period to show something did NOT
    happen, always after a positive signal that the thing being waited for would have)."""
    await task.deferLater(_reactor(), seconds, lambda: None)


async def _with_timeout(d: Any, what: str, timeout: float = WAIT_S) -> Any:
    d = defer.maybeDeferred(lambda: d)
    try:
        return await d.addTimeout(timeout, _reactor())
    except defer.TimeoutError:
        raise AssertionError(f"{what} did not fire within {timeout} s") from None


# ---------------------------------------------------------------------------- transports


@implementer(IDatagramReceiver)
class Receiver:
    """Records what a transport hands its receiver."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, bytes]] = []
        self.lost: list[tuple[Any, str]] = []

    def datagramReceived(self, transport: Any, data: bytes) -> None:
        self.got.append((transport, data))

    def transportLost(self, transport: Any, reason: str) -> None:
        self.lost.append((transport, reason))

    @property
    def data(self) -> list[bytes]:
        return [d for _t, d in self.got]


@implementer(IBatchDatagramReceiver)
class BatchReceiver(Receiver):
    """A receiver that also takes runs of datagrams (what UDP GRO reads at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    def datagramsReceived(self, transport: Any, datagrams: list[bytes]) -> None:
        self.runs += 1
        self.got.extend((transport, d) for d in datagrams)


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def _selectables() -> set[Any]:
    r = _reactor()
    return set(r.getReaders()) | set(r.getWriters())


class _Rig:
    """Opens listeners and paths for one test and closes them all at the end; on a clean
    exit also checks that no socket was left registered with the reactor."""

    def __init__(self, factory: Any, host: str) -> None:
        self.factory = factory
        self.host = host
        self.listeners: list[Any] = []
        self.paths: list[Any] = []
        self.baseline = _selectables()

    def listen(self, receiver: Any, port: int = 0) -> Any:
        lst = self.factory.listen(_reactor(), self.host, port, receiver)
        self.listeners.append(lst)
        return lst

    async def connect(self, remote: tuple[str, int], receiver: Any) -> Any:
        path = await _with_timeout(
            self.factory.connect(_reactor(), remote, receiver), f"connect to {remote}"
        )
        self.paths.append(path)
        return path

    async def __aenter__(self) -> _Rig:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for p in self.paths:
            p.close()
        for lst in self.listeners:
            await _with_timeout(lst.close(), "IListener.close()")
        if exc_type is None:
            await wait_until(
                lambda: _selectables() <= self.baseline, "every socket of the test to close"
            )


def _free_port(host: str, stream: bool) -> int:
    """A port nothing listens on (bound, then closed at once)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
    try:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
    finally:
        s.close()


class TransportFactoryTests:
    """
    Conformance of an ``ITransportFactory`` plugin, its ``IListener`` and ``ITransport``.

    A subclass provides:

    - ``make_factory(self)``: a fresh factory (preferably through
      :func:`jumping.plugin.load`, so the plugin path is exercised);
    - ``kind``: the kind its transports report (``'udp'``, ``'tcp'``, ``'quic'``);
    - ``stream``: True for connection-oriented transports (a refused connect errbacks,
      the peer closing is reported through ``transportLost``);
    - ``max_payload``: the largest datagram the transport documents (65535 unless the
      transport says otherwise, e.g. 65507 for UDP over IPv4); it must round-trip.
    """

    kind: str = ""
    stream: bool = False
    max_payload: int = 65535
    host: str = "127.0.0.1"
    burst: int = 32

    def make_factory(self) -> Any:
        raise NotImplementedError("subclass must return the ITransportFactory under test")

    # helpers ---------------------------------------------------------------------
    async def _pair(
        self, rig: _Rig, server: Receiver, client: Receiver | None = None
    ) -> tuple[Any, Receiver, Any, Any]:
        """Listener + one connected client path + the server's path object for it."""
        listener = rig.listen(server)
        client = client or Receiver()
        path = await rig.connect(listener.local_address, client)
        before = len(server.got)
        path.send(b"hello")
        await wait_until(lambda: len(server.got) > before, "the first datagram at the listener")
        back = server.got[-1][0]
        if IProvisionalPath.providedBy(back) and back.provisional:
            # the node confirms a path once it authenticated a packet on it; until then a
            # listener may hand out a fresh provisional object per datagram (docs/security.md)
            back.confirm()
        return listener, client, path, back

    # tests -----------------------------------------------------------------------
    @pytest_twisted.ensureDeferred
    async def test_everything_provides_its_interface(self) -> None:
        factory = self.make_factory()
        assert verifyObject(ITransportFactory, factory)
        assert factory.kind == self.kind
        async with _Rig(factory, self.host) as rig:
            listener, _client, path, back = await self._pair(rig, Receiver())
            assert verifyObject(IListener, listener)
            for t in (path, back):
                assert verifyObject(ITransport, t)
                assert t.kind == self.kind
                assert t.connected is True
                assert isinstance(t.send_errors, int) and t.send_errors == 0

    @pytest_twisted.ensureDeferred
    async def test_listen_on_port_zero_resolves_the_port(self) -> None:
        async with _Rig(self.make_factory(), self.host) as rig:
            listener = rig.listen(Receiver())
            host, port = listener.local_address
            assert host == self.host
            assert isinstance(port, int) and 0 < port < 65536

    @pytest_twisted.ensureDeferred
    async def test_datagrams_both_ways_intact_and_in_order(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            _listener, client, path, back = await self._pair(rig, server)
            up = [bytes([i]) * (1 + i * 37 % 1200) for i in range(self.burst)]
            down = [b"down-%d-" % i + bytes(range(256)) * (i % 5) for i in range(self.burst)]
            for m in up:
                path.send(m)
            for m in down:
                back.send(m)
            await wait_until(lambda: len(server.got) >= 1 + len(up), "the upstream burst")
            await wait_until(lambda: len(client.got) >= len(down), "the downstream burst")
            assert server.data[1:] == up
            assert client.data == down
            assert all(t is back for t, _d in server.got), "one path object per remote"
            assert all(t is path for t, _d in client.got)
            assert path.send_errors == 0 and back.send_errors == 0

    @pytest_twisted.ensureDeferred
    async def test_send_batch_delivers_exactly_what_sends_would(self) -> None:
        """Only for transports providing the optional ``IBatchTransport``; the receivers
        take runs too (``IBatchDatagramReceiver``), so both batch paths are exercised."""
        server = BatchReceiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            _listener, client, path, back = await self._pair(rig, server, BatchReceiver())
            if not IBatchTransport.providedBy(path):
                pytest.skip("the transport does not provide IBatchTransport")
            assert verifyObject(IBatchTransport, path) and verifyObject(IBatchTransport, back)
            batch = (
                [bytes([i]) * 1400 for i in range(100)]  # a run beyond one kernel batch
                + [b"short"]
                + [bytes([i]) * (1 + i * 97 % 1400) for i in range(40)]  # sizes all differ
                + [bytes([i]) * 600 for i in range(10)]
                + [b"t" * 300]  # a run whose last datagram is shorter
            )
            path.send_batch(list(batch))
            back.send_batch(list(batch))
            n = 1 + len(batch)
            await wait_until(lambda: len(server.got) >= n, "the upstream batch")
            await wait_until(lambda: len(client.got) >= len(batch), "the downstream batch")
            assert server.data[1:] == batch
            assert client.data == batch
            assert path.send_errors == 0 and back.send_errors == 0
            path.send_batch([])  # nothing to send: fine
            path.close()
            path.send_batch([b"after close"] * 3)  # no raise, not delivered
            path2 = await rig.connect(_listener.local_address, Receiver())
            path2.send(b"marker")
            await wait_until(lambda: b"marker" in server.data, "a datagram from another path")
            await _turns(0.1)
            assert b"after close" not in server.data

    @pytest_twisted.ensureDeferred
    async def test_transport_ids_are_unique_and_stable(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            listener, _c1, p1, b1 = await self._pair(rig, server)
            p2 = await rig.connect(listener.local_address, Receiver())
            p2.send(b"second")
            await wait_until(lambda: any(t is not b1 for t, _d in server.got), "second path")
            b2 = next(t for t, _d in server.got if t is not b1)
            ids = [p1.transport_id, b1.transport_id, p2.transport_id, b2.transport_id]
            assert all(isinstance(i, str) and i for i in ids)
            assert len(set(ids)) == 4, ids
            p1.send(b"again")
            await wait_until(lambda: server.data.count(b"again") == 1, "more traffic")
            assert [p1.transport_id, b1.transport_id] == ids[:2], "ids must not change"
            p2.close()
            p3 = await rig.connect(listener.local_address, Receiver())
            assert p3.transport_id not in ids, "ids are never reused while the node runs"

    @pytest_twisted.ensureDeferred
    async def test_local_and_remote_addresses(self) -> None:
        async with _Rig(self.make_factory(), self.host) as rig:
            listener, _client, path, back = await self._pair(rig, Receiver())
            lhost, lport = listener.local_address
            assert tuple(path.remote_address) == (lhost, lport)
            assert tuple(back.local_address) == (lhost, lport)
            # a path opened without ``local`` may report the wildcard it is bound to
            host, port = path.local_address
            assert host in (self.host, "0.0.0.0", "::", ""), host
            assert tuple(back.remote_address) == (self.host, port)

    @pytest_twisted.ensureDeferred
    async def test_connect_from_a_chosen_local_address(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            listener = rig.listen(server)
            local = (self.host, _free_port(self.host, self.stream))
            path = await _with_timeout(
                rig.factory.connect(_reactor(), listener.local_address, Receiver(), local),
                "connect with a local address",
            )
            rig.paths.append(path)
            assert tuple(path.local_address) == local
            path.send(b"from a chosen source")
            await wait_until(lambda: server.got, "the datagram")
            assert tuple(server.got[0][0].remote_address) == local

    @pytest_twisted.ensureDeferred
    async def test_close_is_idempotent_and_send_after_close_is_dropped(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            listener, _client, path, back = await self._pair(rig, server)
            path.close()
            assert path.connected is False
            path.close()  # idempotent
            assert path.connected is False
            errors = path.send_errors
            path.send(b"after close")  # must neither raise nor arrive
            assert path.send_errors >= errors
            # a positive signal first: a datagram from another path does arrive...
            other = await rig.connect(listener.local_address, Receiver())
            other.send(b"marker")
            await wait_until(lambda: b"marker" in server.data, "a datagram from another path")
            await _turns(0.1)
            assert b"after close" not in server.data  # ...the one sent after close does not
            back.close()
            back.close()
            assert back.connected is False
            back.send(b"server after close")  # no raise

    @pytest_twisted.ensureDeferred
    async def test_listener_close_closes_its_paths(self) -> None:
        async with _Rig(self.make_factory(), self.host) as rig:
            listener, _client, _path, back = await self._pair(rig, Receiver())
            rig.listeners.remove(listener)
            d = listener.close()
            assert isinstance(d, defer.Deferred), "IListener.close() returns a Deferred"
            await _with_timeout(d, "IListener.close()")
            await wait_until(lambda: back.connected is False, "the listener's path to close")
            back.send(b"x")  # no raise

    @pytest_twisted.ensureDeferred
    async def test_port_in_use_is_an_oserror_at_once_leaving_nothing_open(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            listener = rig.listen(server)
            port = listener.local_address[1]
            fds, selectables = _open_fds(), _selectables()
            with pytest.raises(OSError) as info:
                rig.factory.listen(_reactor(), self.host, port, Receiver())
            assert str(port) in str(info.value), f"the error should name the port: {info.value}"
            assert _selectables() == selectables, "a failed listen left a socket registered"
            if fds is not None:
                assert _open_fds() == fds, "a failed listen left a file descriptor open"
            path = await rig.connect(listener.local_address, Receiver())
            path.send(b"still listening")
            await wait_until(lambda: server.data == [b"still listening"], "the first listener")

    @pytest_twisted.ensureDeferred
    async def test_connect_to_a_refused_port(self) -> None:
        port = _free_port(self.host, self.stream)
        factory = self.make_factory()
        async with _Rig(factory, self.host) as rig:
            if self.stream:
                d = factory.connect(_reactor(), (self.host, port), Receiver())
                with pytest.raises(Exception) as info:
                    await _with_timeout(d, "a refused connect")
                assert not isinstance(info.value, AssertionError), "connect never failed"
                assert str(port) in str(info.value), f"unclear error: {info.value!r}"
            else:
                # connectionless: the path opens; what is sent is lost or counted, no raise
                path = await rig.connect((self.host, port), Receiver())
                for _ in range(3):
                    path.send(b"into the void")
                    await _turns(0.01)
                assert isinstance(path.send_errors, int)

    @pytest_twisted.ensureDeferred
    async def test_max_payload_round_trips_and_65535_is_delivered_or_refused(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            _listener, _client, path, _back = await self._pair(rig, server)
            for size in sorted({self.max_payload, 65535}):
                payload = os.urandom(size)
                errors = path.send_errors
                path.send(payload)

                def done(size: int = size, errors: int = errors) -> bool:
                    return path.send_errors > errors or any(len(d) == size for d in server.data)

                await wait_until(done, f"a {size}-byte datagram to arrive or be refused")
                arrived = [d for d in server.data if len(d) == size]
                if size == self.max_payload:
                    assert arrived == [payload], f"the documented max ({size}) must round-trip"
                elif arrived:
                    assert arrived == [payload]
                else:
                    assert path.send_errors == errors + 1
                marker = b"usable after %d" % size
                path.send(marker)  # the path still works

                def arrived_marker(marker: bytes = marker) -> bool:
                    return marker in server.data

                await wait_until(arrived_marker, "a datagram after the big one")

    @pytest_twisted.ensureDeferred
    async def test_oversize_payload_never_raises_nor_arrives(self) -> None:
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            _listener, _client, path, _back = await self._pair(rig, server)
            path.send(b"x" * 65536)  # beyond the interface's limit: dropped (counted or not)
            path.send(b"after")
            await wait_until(lambda: b"after" in server.data, "the next datagram")
            assert all(len(d) <= 65535 for d in server.data)

    @pytest_twisted.ensureDeferred
    async def test_peer_close_is_reported_through_transport_lost(self) -> None:
        if not self.stream:
            pytest.skip("datagram transports have no connection to lose")
        server = Receiver()
        async with _Rig(self.make_factory(), self.host) as rig:
            listener, client, path, back = await self._pair(rig, server)
            path.close()  # the client end goes away: the server end is told
            await wait_until(lambda: any(t is back for t, _r in server.lost), "transportLost")
            assert back.connected is False
            assert all(isinstance(r, str) and r for _t, r in server.lost)
            client2 = Receiver()
            path2 = await rig.connect(listener.local_address, client2)
            path2.send(b"two")
            await wait_until(lambda: b"two" in server.data, "the second connection")
            back2 = server.got[-1][0]
            back2.close()  # the server end goes away: the client end is told
            await wait_until(lambda: any(t is path2 for t, _r in client2.lost), "transportLost")
            assert path2.connected is False
            assert len([t for t, _r in server.lost if t is back]) == 1, "reported once"
            assert not client.got


# ---------------------------------------------------------------------------- ownership


async def _outcome(d: Any) -> tuple[str, Any]:
    try:
        return "ok", await _with_timeout(d, "an ownership call")
    except OwnershipConflict as e:
        return "conflict", e


async def _conflict(d: Any, what: str) -> None:
    kind, value = await _outcome(d)
    assert kind == "conflict", f"{what}: expected OwnershipConflict, got {value!r}"


def _is_token(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t > 0


class OwnershipBackendTests:
    """
    Conformance of an ``IOwnershipBackend`` plugin (docs/protocol.md#cluster-ownership).

    A subclass provides ``make_backends(self, n)``: ``n`` fresh, *unstarted* backends (a
    list, or a Deferred firing with one) with distinct ``node_id`` that share one
    cluster/store; the mixin calls their ``start()``. Each test uses random session ids, so
    a store shared between tests (a real cluster) is fine; every backend is closed at the
    end of each test.

    Lifecycle (``jumping.interfaces``): constructing a backend starts no thread, opens no
    descriptor and schedules no reactor call (no lease before ``start()``); ``close()``
    works without ``start()`` and stops the threads ``start()`` made.

    Nothing memory-specific is assumed: tokens are positive ints that strictly increase on
    every hand-over (not necessarily by one), watch callbacks may arrive late (waits are
    bounded by ``watch_timeout``), and a watch may report intermediate changes.
    """

    watch_timeout: float = WAIT_S

    def make_backends(self, n: int) -> Any:
        raise NotImplementedError("subclass must return n IOwnershipBackend sharing a store")

    async def _backends(self, n: int) -> list[Any]:
        backends = list(await _with_timeout(self.make_backends(n), "make_backends"))
        assert len(backends) == n
        self._open = backends
        for b in backends:
            await self._start(b)
        return backends

    async def _start(self, backend: Any) -> None:
        r = backend.start()
        if isinstance(r, defer.Deferred):
            await _with_timeout(r, "IOwnershipBackend.start()")
        else:
            assert r is None, f"IOwnershipBackend.start() returns None or a Deferred, not {r!r}"

    async def _close(self) -> None:
        for b in getattr(self, "_open", []):
            await _with_timeout(b.close(), "IOwnershipBackend.close()")
        self._open = []

    @staticmethod
    def sid() -> str:
        return secrets.token_hex(16)

    @staticmethod
    def record(owner: str, version: int = 1) -> dict[str, Any]:
        return {"client_public_key": "ab" * 32, "state_version": version, "owner": owner}

    # tests -----------------------------------------------------------------------
    @pytest_twisted.ensureDeferred
    async def test_provides_interface_with_distinct_node_ids(self) -> None:
        try:
            backends = await self._backends(3)
            for b in backends:
                assert verifyObject(IOwnershipBackend, b)
                assert isinstance(b.node_id, str) and b.node_id
            assert len({b.node_id for b in backends}) == 3
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_shared_and_healthy_are_declared_booleans(self) -> None:
        """The node reads ``shared`` (may it take sessions over?) and ``healthy`` (status,
        metrics) from the interface, never by guessing: backends sharing a store say so."""
        try:
            backends = await self._backends(2)
            for b in backends:
                assert b.shared is True, "backends made to share one store must say shared"
                assert b.healthy is True, "a started backend that serves claims is healthy"
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_claim_new_then_create_again_conflicts(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            token = await _with_timeout(a.claim(s, self.record(a.node_id), None), "claim")
            assert _is_token(token), f"a fencing token is a positive int, got {token!r}"
            await _conflict(a.claim(s, self.record(a.node_id), None), "create twice")
            await _conflict(b.claim(s, self.record(b.node_id), None), "create what A owns")
            assert await a.get(s) == (self.record(a.node_id), token)
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_claim_with_expected_token(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            await _conflict(a.claim(s, self.record(a.node_id), 1), "CAS on a missing record")
            t1 = await a.claim(s, self.record(a.node_id), None)
            t2 = await b.claim(s, self.record(b.node_id), t1)
            assert _is_token(t2) and t2 > t1
            await _conflict(a.claim(s, self.record(a.node_id), t1), "CAS with a stale token")
            assert await b.get(s) == (self.record(b.node_id), t2)
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_renew_under_fencing(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            await _conflict(a.renew(s, 1, self.record(a.node_id)), "renew a missing record")
            t1 = await a.claim(s, self.record(a.node_id), None)
            t2 = await a.renew(s, t1, self.record(a.node_id, 2))
            assert _is_token(t2) and t2 >= t1
            assert await b.get(s) == (self.record(a.node_id, 2), t2)
            t3 = await a.renew(s, t2, self.record(a.node_id, 3))
            assert t3 >= t2
            t4 = await b.claim(s, self.record(b.node_id), t3)
            assert t4 > t3
            await _conflict(a.renew(s, t3, self.record(a.node_id, 4)), "renew after losing it")
            assert await a.get(s) == (self.record(b.node_id), t4), "a refused renew wrote"
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_release(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            assert await a.release(self.sid(), 1) is None  # unknown session: nothing to do
            t1 = await a.claim(s, self.record(a.node_id), None)
            t2 = await b.claim(s, self.record(b.node_id), t1)
            assert await a.release(s, t1) is None  # stale: ignored
            assert await b.get(s) == (self.record(b.node_id), t2)
            assert await b.release(s, t2) is None
            assert await a.get(s) is None
            t3 = await a.claim(s, self.record(a.node_id), None)  # free again
            assert _is_token(t3) and t3 > t2
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_get_returns_a_copy_of_the_record_and_its_token(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            assert await b.get(s) is None
            rec = self.record(a.node_id)
            token = await a.claim(s, rec, None)
            rec["owner"] = "mutated by the caller"
            got = await b.get(s)
            assert got == (self.record(a.node_id), token)
            got[0]["owner"] = "mutated by a reader"
            assert await a.get(s) == (self.record(a.node_id), token)
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_watch_fires_after_each_change_on_the_reactor_thread(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            reactor_thread = threading.get_ident()
            seen: list[tuple[str, int | None, int, Any]] = []

            def cb(session_id: str, token: int | None) -> None:
                # read back at once: the change must already be visible
                seen.append((session_id, token, threading.get_ident(), b.get(session_id)))

            watch = b.watch(s, cb)
            assert callable(getattr(watch, "cancel", None))
            try:
                token = 0
                for step in ("claim", "take over", "renew"):
                    if step == "claim":
                        token = await a.claim(s, self.record(a.node_id), None)
                    elif step == "take over":
                        token = await b.claim(s, self.record(b.node_id), token)
                    else:
                        token = await b.renew(s, token, self.record(b.node_id, 2))
                    await wait_until(
                        lambda: any(t == token for _s, t, _i, _g in seen),  # noqa: B023
                        f"the watch to report the {step} (token {token})",
                        self.watch_timeout,
                    )
                await b.release(s, token)
                await wait_until(
                    lambda: seen[-1][1] is None,
                    "the watch to report the release",
                    self.watch_timeout,
                )
            finally:
                watch.cancel()
            for session_id, tok, ident, read in seen:
                assert session_id == s
                assert ident == reactor_thread, "watch callbacks run on the reactor thread"
                now = await _with_timeout(read, "get() from a watch callback")
                if tok is None:
                    assert now is None, "notified of a release the store does not show yet"
                else:
                    assert now is not None and now[1] >= tok, "notified before the change"
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_cancelled_watch_stays_silent(self) -> None:
        try:
            a, b = await self._backends(2)
            s = self.sid()
            cancelled: list[Any] = []
            sentinel: list[Any] = []
            w1 = b.watch(s, lambda *args: cancelled.append(args))
            w1.cancel()
            w2 = a.watch(s, lambda *args: sentinel.append(args))
            try:
                t = await a.claim(s, self.record(a.node_id), None)
                await a.release(s, t)
                await wait_until(
                    lambda: sentinel and sentinel[-1][1] is None,
                    "a live watch to see the changes",
                    self.watch_timeout,
                )
                await _turns(0.1)
                assert cancelled == [], "a cancelled watch fired"
            finally:
                w2.cancel()
            w2.cancel()  # cancel twice: harmless
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_tokens_strictly_increase_across_hand_overs(self) -> None:
        try:
            backends = await self._backends(3)
            s = self.sid()
            tokens = [await backends[0].claim(s, self.record(backends[0].node_id), None)]
            for i in range(1, 10):
                b = backends[i % 3]
                if i % 4 == 0:  # sometimes give it up and create afresh
                    await backends[(i - 1) % 3].release(s, tokens[-1])
                    assert await b.get(s) is None
                    tokens.append(await b.claim(s, self.record(b.node_id), None))
                else:
                    got = await b.get(s)
                    assert got is not None and got[1] == tokens[-1]
                    tokens.append(await b.claim(s, self.record(b.node_id), got[1]))
                if i % 3 == 0:
                    tokens.append(await b.renew(s, tokens[-1], self.record(b.node_id, i)))
            assert all(_is_token(t) for t in tokens)
            assert all(x <= y for x, y in zip(tokens, tokens[1:], strict=False))
            hand_overs = [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]
            assert len(hand_overs) >= 10 and hand_overs == sorted(set(hand_overs))
            for stale in set(tokens[:-1]):
                await _conflict(
                    backends[0].renew(s, stale, self.record("x")), f"renew with {stale}"
                )
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_creates_exactly_one_wins(self) -> None:
        try:
            backends = await self._backends(4)
            s = self.sid()
            outcomes = await defer.gatherResults(
                [
                    defer.ensureDeferred(_outcome(b.claim(s, self.record(b.node_id), None)))
                    for b in backends
                ]
            )
            winners = [i for i, (kind, _v) in enumerate(outcomes) if kind == "ok"]
            assert len(winners) == 1, outcomes
            got = await backends[0].get(s)
            w = winners[0]
            assert got == (self.record(backends[w].node_id), outcomes[w][1])
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_concurrent_compare_and_swap_exactly_one_wins(self) -> None:
        try:
            backends = await self._backends(4)
            s = self.sid()
            t0 = await backends[0].claim(s, self.record(backends[0].node_id), None)
            outcomes = await defer.gatherResults(
                [
                    defer.ensureDeferred(_outcome(b.claim(s, self.record(b.node_id), t0)))
                    for b in backends
                ]
            )
            winners = [(i, v) for i, (kind, v) in enumerate(outcomes) if kind == "ok"]
            assert len(winners) == 1, outcomes
            ((w, token),) = winners
            assert token > t0
            assert await backends[1].get(s) == (self.record(backends[w].node_id), token)
        finally:
            await self._close()

    # lifecycle ------------------------------------------------------------------
    @pytest_twisted.ensureDeferred
    async def test_constructing_starts_nothing(self) -> None:
        before = footprint()
        made = self.make_backends(1)
        assert not isinstance(made, defer.Deferred) or made.called, (
            "make_backends must build backends without waiting on the reactor"
        )
        after = footprint()
        backends = list(await _with_timeout(made, "make_backends"))
        self._open = backends
        try:
            started = started_since(before, after)
            assert not started, (
                "the constructor started something (it runs before twistd forks and drops "
                "privileges; start() is the place): " + "; ".join(started)
            )
        finally:
            await self._close()

    @pytest_twisted.ensureDeferred
    async def test_close_without_start_is_harmless(self) -> None:
        backends = list(await _with_timeout(self.make_backends(1), "make_backends"))
        for b in backends:
            await _with_timeout(b.close(), "IOwnershipBackend.close() without start()")
            await _with_timeout(b.close(), "a second IOwnershipBackend.close()")

    @pytest_twisted.ensureDeferred
    async def test_close_stops_the_threads_start_made(self) -> None:
        before = footprint()
        try:
            (a,) = await self._backends(1)
            sid = self.sid()
            await _with_timeout(a.claim(sid, self.record(a.node_id), None), "claim")
        finally:
            await self._close()
        await wait_until(
            lambda: not threads_since(before),
            "every thread start() made has ended after close()",
            self.watch_timeout,
        )


# ---------------------------------------------------------------------------- rate limits

REASONS = ("SWITCH_RATE_LIMITED", "COOLDOWN_ACTIVE")


class RateLimitPolicyTests:
    """
    Conformance of an ``IRateLimitPolicy`` plugin (invariant 6 in docs/protocol.md).

    A subclass provides ``make_policy(self, *, max_per_min, cooldown_ms, max_keys)``: a
    policy allowing at most ``max_per_min`` actions per key in any 60 s window, at least
    ``cooldown_ms`` apart, tracking at most ``max_keys`` keys (limits set by the plugin's
    options, which ``reconfigure`` leaves alone); and ``make_policy_following(self, *,
    max_keys)``: the plugin with no limit options, which takes them from the node's policy
    (``reconfigure(policy)``). The policy is pure: time is what the caller passes, so
    these tests use instants far from the wall clock.
    """

    max_per_min = 4
    cooldown_ms = 1000
    max_keys = 64
    T0 = 10**12  # ms; nowhere near time.time()

    def make_policy(self, *, max_per_min: int, cooldown_ms: int, max_keys: int) -> Any:
        raise NotImplementedError("subclass must return the IRateLimitPolicy under test")

    def make_policy_following(self, *, max_keys: int) -> Any:
        """The plugin as built from a ``[rate_limit]`` table that sets no switch limits:
        they come from the node's policy (``reconfigure``)."""
        raise NotImplementedError("subclass must return the IRateLimitPolicy under test")

    def policy(self) -> Any:
        p = self.make_policy(
            max_per_min=self.max_per_min, cooldown_ms=self.cooldown_ms, max_keys=self.max_keys
        )
        assert verifyObject(IRateLimitPolicy, p)
        return p

    def test_fresh_key_is_allowed_and_check_does_not_consume(self) -> None:
        p = self.policy()
        assert p.tracked == 0
        for i in range(10 * self.max_per_min):
            assert p.check("s", self.T0 + i) is None
        assert p.tracked == 0, "check() must not create state"
        p.record("s", self.T0)
        assert p.tracked == 1
        later = self.T0 + self.cooldown_ms
        for _ in range(10 * self.max_per_min):
            assert p.check("s", later) is None
        p.record("s", later)  # still allowed: checks consumed nothing
        assert p.tracked == 1

    def test_cooldown(self) -> None:
        p = self.policy()
        p.record("s", self.T0)
        for dt in (0, 1, self.cooldown_ms // 2, self.cooldown_ms - 1):
            assert p.check("s", self.T0 + dt) == "COOLDOWN_ACTIVE"
        assert p.check("s", self.T0 + self.cooldown_ms) is None

    def test_rate_per_minute(self) -> None:
        p = self.policy()
        step = self.cooldown_ms
        times = [self.T0 + i * step for i in range(self.max_per_min)]
        for t in times:
            assert p.check("s", t) is None
            p.record("s", t)
        after = times[-1] + step
        assert after - times[0] < 60_000
        assert p.check("s", after) == "SWITCH_RATE_LIMITED"
        assert p.check("s", times[0] + 60_000 - 1) == "SWITCH_RATE_LIMITED"
        assert p.check("s", times[0] + 60_000) is None  # the oldest left the window

    def test_keys_are_independent_and_forget_clears(self) -> None:
        p = self.policy()
        p.record("a", self.T0)
        p.record("*", self.T0)
        assert p.check("a", self.T0) == "COOLDOWN_ACTIVE"
        assert p.check("b", self.T0) is None
        assert p.tracked == 2
        p.forget("a")
        assert p.tracked == 1
        assert p.check("a", self.T0) is None
        assert p.check("*", self.T0) == "COOLDOWN_ACTIVE"
        p.forget("never seen")  # harmless
        p.forget("a")
        assert p.tracked == 1

    def test_tracked_keys_are_bounded(self) -> None:
        p = self.policy()
        for i in range(10 * self.max_keys):
            p.record(f"k{i}", self.T0 + i)
            assert p.tracked <= self.max_keys
        assert p.tracked == self.max_keys

    def test_reconfigure_takes_the_policy_limits_left_open_and_keeps_state(self) -> None:
        from jumping.core.policy import Policy

        p = self.make_policy_following(max_keys=self.max_keys)
        assert verifyObject(IRateLimitPolicy, p)
        p.reconfigure(Policy(max_switches_per_min=3, switch_cooldown_ms=400))
        p.record("s", self.T0)
        assert p.check("s", self.T0 + 399) == "COOLDOWN_ACTIVE"
        assert p.check("s", self.T0 + 400) is None
        p.record("s", self.T0 + 400)
        p.record("s", self.T0 + 800)
        assert p.check("s", self.T0 + 1200) == "SWITCH_RATE_LIMITED", "3 per minute"
        # a reload: new limits apply to the history already recorded
        p.reconfigure(Policy(max_switches_per_min=4, switch_cooldown_ms=2000))
        assert p.tracked == 1, "reconfigure must keep every key's state"
        assert p.check("s", self.T0 + 2799) == "COOLDOWN_ACTIVE"
        assert p.check("s", self.T0 + 2800) is None
        p.reconfigure(Policy(max_switches_per_min=2, switch_cooldown_ms=2000))
        assert p.check("s", self.T0 + 2800) == "SWITCH_RATE_LIMITED", "2 per minute now"

    def test_limits_set_by_options_survive_reconfigure(self) -> None:
        from jumping.core.policy import Policy

        p = self.policy()
        p.record("s", self.T0)
        p.reconfigure(Policy(max_switches_per_min=1, switch_cooldown_ms=60_000))
        assert p.tracked == 1
        assert p.check("s", self.T0 + self.cooldown_ms - 1) == "COOLDOWN_ACTIVE"
        assert p.check("s", self.T0 + self.cooldown_ms) is None, "the option's cooldown holds"

    def test_only_documented_reasons_and_deterministic_in_time(self) -> None:
        import random

        rng = random.Random(6479)
        p, q = self.policy(), self.policy()
        now = self.T0
        for _ in range(2000):
            now += rng.choice((0, 1, self.cooldown_ms // 3, self.cooldown_ms, 20_000, 61_000))
            key = rng.choice(("a", "b", "*"))
            r = p.check(key, now)
            assert r is None or r in REASONS, r
            assert q.check(key, now) == r, "same inputs, same answer: time is passed in"
            if r is None and rng.random() < 0.7:
                p.record(key, now)
                q.record(key, now)
                assert p.check(key, now) is not None, "an action must not be allowed twice at once"
                q.check(key, now)


# ---------------------------------------------------------------------------- event sinks


def sample_event(i: int) -> dict[str, Any]:
    """A complete, schema-valid event (docs/events.md)."""
    return {
        "schema": "jumping.event/1",
        "ts_ms": 1_800_000_000_000 + i,
        "event_type": "SESSION_STATS",
        "session_id": "ab" * 16,
        "node_id": "conformance",
        "policy_version": "1",
        "state_version": 1,
        "reason_code": None,
        "seq": i,
        "prev_hash": "0" * 64,
    }


def odd_events() -> list[dict[str, Any]]:
    """JSON-ready events no sink should choke on: empty, missing or null fields,
    extreme numbers, control characters and separators, deep and large values."""
    base = sample_event(0)
    return [
        {},
        {"event_type": None, "ts_ms": None, "seq": None},
        {**base, "ts_ms": 0},
        {**base, "ts_ms": -1},
        {**base, "ts_ms": 2**70, "state_version": 2**64},
        {**base, "ts_ms": 1.5e12, "score": -0.0},
        {**base, "event_type": "SECURITY_EVENT", "reason_code": "a=b\\c|d\n<13>1 fake"},
        {**base, "event_type": "x" * 2000, "session_id": "\u2603\u00e9\U0001f600"},
        {**base, "detail": "\x00\x01\x1b[31m\r\n\t\u2028", "extra": {"k": [1, {"d": [None]}]}},
        {**base, "blob": "y" * 100_000},
        {**base, "event_type": 42, "session_id": ["not", "a", "string"], "node_id": {}},
        {"nested": {"a": {"b": {"c": {"d": {"e": [[[[]]]]}}}}}, "t": True, "f": False},
    ]


class EventSinkTests:
    """
    Conformance of an ``IEventSink`` plugin (docs/events.md; invariant 9 of docs/protocol.md).

    A subclass provides:

    - ``make_sink(self, max_queue=None)``: a fresh, *unstarted* sink (as the plugin loader
      builds it) to a working destination; with ``max_queue`` its queue must hold at most
      that many events (a sink without a queue may ignore it). The mixin calls
      ``start()``. The subclass closes what it opened for the destination in its own
      teardown (pytest fixture) if needed.
    - ``name``: the plugin's name, which the sink reports.
    - optionally ``destination_count(self)``: how many events reached the destination so
      far, or None (the default) when the test cannot observe it.

    Counters: ``delivered + dropped + queue_depth == emitted`` once the sink settles.

    Lifecycle (``jumping.interfaces``): constructing a sink starts no thread, opens no
    descriptor and schedules no reactor call; events emitted before ``start()`` are
    delivered after it; ``close()`` works without ``start()`` and stops the threads
    ``start()`` made.
    """

    name: str = ""
    settle_timeout: float = WAIT_S

    def make_sink(self, max_queue: int | None = None) -> Any:
        raise NotImplementedError("subclass must return the IEventSink under test")

    def destination_count(self) -> int | None:
        return None

    async def started(self, max_queue: int | None = None) -> Any:
        """A sink from :meth:`make_sink`, started (its ``start()`` awaited)."""
        sink = self.make_sink(max_queue=max_queue)
        await self.start(sink)
        return sink

    async def start(self, sink: Any) -> None:
        r = sink.start()
        if isinstance(r, defer.Deferred):
            await _with_timeout(r, "IEventSink.start()", self.settle_timeout)
        else:
            assert r is None, f"IEventSink.start() returns None or a Deferred, not {r!r}"

    @staticmethod
    def accounted(sink: Any) -> int:
        return int(sink.delivered) + int(sink.dropped) + int(sink.queue_depth)

    async def settle(self, sink: Any, emitted: int) -> None:
        await wait_until(
            lambda: sink.queue_depth == 0 and self.accounted(sink) == emitted,
            f"delivered + dropped + queue_depth == {emitted} (emitted) with an empty queue",
            self.settle_timeout,
        )

    async def close(self, sink: Any) -> None:
        d = sink.close()
        assert isinstance(d, defer.Deferred), "IEventSink.close() returns a Deferred"
        await _with_timeout(d, "IEventSink.close()", self.settle_timeout)

    def emit_all(self, sink: Any, events: Iterable[dict[str, Any]]) -> int:
        n = 0
        for e in events:
            assert sink.emit(e) is None
            n += 1
        return n

    # tests -----------------------------------------------------------------------
    @pytest_twisted.ensureDeferred
    async def test_provides_interface_and_starts_at_zero(self) -> None:
        sink = await self.started()
        try:
            assert verifyObject(IEventSink, sink)
            assert sink.name == self.name
            assert (sink.delivered, sink.dropped, sink.queue_depth) == (0, 0, 0)
        finally:
            await self.close(sink)

    @pytest_twisted.ensureDeferred
    async def test_events_are_delivered_and_counted(self) -> None:
        sink = await self.started()
        try:
            n = self.emit_all(sink, (sample_event(i) for i in range(200)))
            await self.settle(sink, n)
            assert sink.delivered == n and sink.dropped == 0
            if self.destination_count() is not None:
                await wait_until(lambda: self.destination_count() == n, "events at destination")
        finally:
            await self.close(sink)

    @pytest_twisted.ensureDeferred
    async def test_odd_events_never_raise_nor_break_the_sink(self) -> None:
        sink = await self.started()
        try:
            events = odd_events()
            before = copy.deepcopy(events)
            n = self.emit_all(sink, events)
            await self.settle(sink, n)
            assert events == before, "the sink mutated an event"
            delivered = sink.delivered
            n += self.emit_all(sink, [sample_event(1)])  # the sink still works
            await self.settle(sink, n)
            assert sink.delivered == delivered + 1, "the sink stopped delivering after odd events"
        finally:
            await self.close(sink)

    @pytest_twisted.ensureDeferred
    async def test_emit_never_blocks_and_overflow_is_counted(self) -> None:
        sink = await self.started(max_queue=16)
        try:
            events = [sample_event(i) for i in range(20_000)]
            t = time.monotonic()
            n = self.emit_all(sink, events)
            elapsed = time.monotonic() - t
            assert elapsed < 2.0, f"emit blocked: {n} events took {elapsed:.2f} s"
            assert 0 <= sink.queue_depth <= 16
            assert self.accounted(sink) <= n
            await self.settle(sink, n)
        finally:
            await self.close(sink)

    @pytest_twisted.ensureDeferred
    async def test_close_flushes_within_a_bound_then_emit_is_dropped(self) -> None:
        sink = await self.started()
        n = self.emit_all(sink, (sample_event(i) for i in range(500)))
        t = time.monotonic()
        await self.close(sink)
        assert time.monotonic() - t < self.settle_timeout
        assert sink.queue_depth == 0, "close() left events queued"
        assert sink.delivered == n, "close() did not flush a healthy destination"
        assert self.accounted(sink) == n
        dropped = sink.dropped
        sink.emit(sample_event(n))  # after close: no raise, counted as dropped
        assert sink.dropped == dropped + 1
        assert sink.delivered == n and sink.queue_depth == 0

    # lifecycle ------------------------------------------------------------------
    @pytest_twisted.ensureDeferred
    async def test_constructing_starts_nothing(self) -> None:
        before = footprint()
        sink = self.make_sink()
        after = footprint()
        try:
            started = started_since(before, after)
            assert not started, (
                "the constructor started something (it runs before twistd forks and drops "
                "privileges; start() is the place): " + "; ".join(started)
            )
        finally:
            await self.close(sink)

    @pytest_twisted.ensureDeferred
    async def test_events_emitted_before_start_are_delivered_after_it(self) -> None:
        sink = self.make_sink()
        try:
            n = self.emit_all(sink, (sample_event(i) for i in range(5)))
            assert sink.delivered == 0
            await self.start(sink)
            await self.settle(sink, n)
            assert sink.delivered == n and sink.dropped == 0
        finally:
            await self.close(sink)

    @pytest_twisted.ensureDeferred
    async def test_close_without_start_drops_and_counts(self) -> None:
        sink = self.make_sink()
        n = self.emit_all(sink, (sample_event(i) for i in range(3)))
        await self.close(sink)
        assert sink.queue_depth == 0 and sink.delivered == 0
        assert self.accounted(sink) == n
        sink.emit(sample_event(n))
        assert self.accounted(sink) == n + 1
        await self.close(sink)  # a second close is harmless

    @pytest_twisted.ensureDeferred
    async def test_close_stops_the_threads_start_made(self) -> None:
        before = footprint()
        sink = await self.started()
        n = self.emit_all(sink, (sample_event(i) for i in range(10)))
        await self.settle(sink, n)
        await self.close(sink)
        await wait_until(
            lambda: not threads_since(before),
            "every thread start() made has ended after close()",
            self.settle_timeout,
        )
