"""
Bad input to the ``quic`` transport: counted drops or clear errors, never a wedge.

Garbage packets, a TLS failure, a wrong pinned certificate, an oversized datagram, a full
queue, a peer that opens a stream, more connections than allowed; each test then shows the
transport still carries datagrams (a positive signal, not just the absence of a crash).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from jumping_quic.client import QuicConnectError
from quichelp import certificate, factory
from twisted.internet import defer, task

from jumping import tls
from jumping.testing.conformance import Receiver, wait_until


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


async def _turns(seconds: float) -> None:
    await task.deferLater(_reactor(), seconds, lambda: None)


class Rig:
    def __init__(self) -> None:
        self.closers: list[Any] = []

    def listen(self, f: Any, receiver: Any) -> Any:
        lst = f.listen(_reactor(), "127.0.0.1", 0, receiver)
        self.closers.append(lst.close)
        return lst

    async def connect(self, f: Any, lst: Any, receiver: Any, local: Any = None) -> Any:
        d = f.connect(_reactor(), lst.local_address, receiver, local)
        path = await d.addTimeout(10, _reactor())
        self.closers.insert(0, path.close)
        return path


@asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        for c in r.closers:
            res = c()
            if isinstance(res, defer.Deferred):
                await res


async def pair(r: Rig, server_factory: Any = None, client_factory: Any = None) -> Any:
    sf = server_factory or factory()
    cf = client_factory or sf
    server, client = Receiver(), Receiver()
    lst = r.listen(sf, server)
    path = await r.connect(cf, lst, client)
    path.send(b"hello")
    await wait_until(lambda: server.data, "the first datagram")
    back = server.got[0][0]
    back.confirm()  # as the node does once it authenticated a packet on it
    return lst, path, back, server, client


async def still_works(path: Any, server: Receiver, tag: bytes = b"still works") -> None:
    path.send(tag)
    await wait_until(lambda: tag in server.data, "a datagram after the bad input")


def _udp_to(addr: Any, payloads: list[bytes]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for p in payloads:
            s.sendto(p, addr)
    finally:
        s.close()


def _fake_initial(size: int = 1200, token: bytes = b"") -> bytes:
    """A long-header INITIAL (QUIC v1) with random CIDs and a random, undecryptable body."""
    dcid, scid = os.urandom(8), os.urandom(8)
    head = bytes([0xC3]) + (1).to_bytes(4, "big") + bytes([8]) + dcid + bytes([8]) + scid
    head += bytes([len(token)]) + token
    body_len = size - len(head) - 2
    return head + (0x4000 | body_len).to_bytes(2, "big") + os.urandom(body_len)


# ------------------------------------------------------------------------------ packets


@pytest_twisted.ensureDeferred
async def test_garbage_packets_are_counted_and_the_listener_keeps_serving() -> None:
    async with rig() as r:
        f = factory(connect_timeout_s=1)
        lst, path, back, server, client = await pair(r, f)
        junk = [b"", b"\x00", os.urandom(3), os.urandom(40), os.urandom(1500)]
        junk += [bytes([0x40]) + os.urandom(30)]  # a short header with an unknown CID
        junk += [_fake_initial(600)]  # an INITIAL below 1200 bytes (RFC 9000 14.1)
        _udp_to(lst.local_address, junk)
        await wait_until(
            lambda: sum(lst.drops.values()) >= len(junk) - 1, "the garbage to be counted"
        )
        assert lst.drops["garbage"] + lst.drops["unknown_connection"] >= len(junk) - 1
        assert len(lst.connections) == 1, "garbage made no connection"
        # garbage with the live connection's CID: aioquic cannot decrypt it and drops it
        cid = next(iter(lst.connections)).conn.host_cid
        _udp_to(lst.local_address, [bytes([0x40]) + cid + os.urandom(60) for _ in range(20)])
        await still_works(path, server)
        back.send(b"down")
        await wait_until(lambda: b"down" in client.data, "the gateway's datagram")


@pytest_twisted.ensureDeferred
async def test_fake_initials_hold_no_state_beyond_the_handshake_deadline() -> None:
    async with rig() as r:
        f = factory(connect_timeout_s=1, max_handshakes=64, retry="never")
        lst = r.listen(f, Receiver())
        _udp_to(lst.local_address, [_fake_initial() for _ in range(20)])
        await wait_until(lambda: lst.half_open == 20, "20 half-open connections")
        await wait_until(lambda: lst.half_open == 0, "the handshake deadline", timeout=5)
        assert not lst.connections and not lst.cids
        assert lst.drops["handshake_timeout"] == 20


@pytest_twisted.ensureDeferred
async def test_under_handshake_load_new_clients_must_answer_a_retry() -> None:
    async with rig() as r:
        f = factory(connect_timeout_s=3, max_handshakes=8)  # retry = auto: from 2 in flight
        server = Receiver()
        lst = r.listen(f, server)
        _udp_to(lst.local_address, [_fake_initial() for _ in range(30)])
        await wait_until(lambda: lst.drops["retry_sent"] >= 28, "retries instead of state")
        assert lst.half_open == 2, "spoofed sources beyond the threshold created nothing"
        # a real client answers the Retry (proving its address) and gets through
        path = await r.connect(f, lst, Receiver())
        await still_works(path, server)
        _udp_to(lst.local_address, [_fake_initial(token=os.urandom(40))])
        await wait_until(lambda: lst.drops["bad_retry_token"] == 1, "a forged token refused")


@pytest_twisted.ensureDeferred
async def test_connection_limits_refuse_with_a_count_and_a_clear_connect_error() -> None:
    async with rig() as r:
        f = factory(connect_timeout_s=1, max_connections=2)
        server = Receiver()
        lst = r.listen(f, server)
        p1 = await r.connect(f, lst, Receiver())
        await r.connect(f, lst, Receiver())
        with pytest.raises(QuicConnectError, match=r"quic 127\.0\.0\.1:\d+: no QUIC handshake"):
            await r.connect(f, lst, Receiver())
        assert lst.drops["connections_full"] >= 1
        await still_works(p1, server)


@pytest_twisted.ensureDeferred
async def test_per_source_limit() -> None:
    async with rig() as r:
        f = factory(connect_timeout_s=1, max_per_source=1)
        lst = r.listen(f, Receiver())
        await r.connect(f, lst, Receiver())
        with pytest.raises(QuicConnectError):
            await r.connect(f, lst, Receiver())
        assert lst.drops["source_full"] >= 1


# ------------------------------------------------------------------------------ TLS


@pytest_twisted.ensureDeferred
async def test_wrong_pinned_certificate_is_a_clear_error_and_leaves_nothing(
    tmp_path: Any,
) -> None:
    _c, _k, other_pin = tls.generate(tmp_path / "other", ["other"])
    async with rig() as r:
        server = Receiver()
        sf = factory()
        lst = r.listen(sf, server)
        wrong = factory(pin_sha256=other_pin)
        with pytest.raises(QuicConnectError) as e:
            await r.connect(wrong, lst, Receiver())
        assert f"has pin {certificate()[2]}, not one of pin_sha256" in str(e.value)
        assert wrong.failures["pin_mismatch"] == 1
        await wait_until(lambda: not lst.connections, "the gateway to drop the refused connection")
        assert not server.got, "nothing of Jumping's was sent before the pin was checked"
        # two pins (a rotation): the right one among them passes
        both = factory(pin_sha256=[other_pin, certificate()[2]])
        path = await r.connect(both, lst, Receiver())
        await still_works(path, server)


@pytest_twisted.ensureDeferred
async def test_tls_failure_against_a_trust_store_is_a_clear_error(tmp_path: Any) -> None:
    other_crt, _k, _p = tls.generate(tmp_path / "ca", ["someone-else"])
    async with rig() as r:
        lst = r.listen(factory(), Receiver())
        store = factory(pin_sha256=None, ca_file=str(other_crt))
        with pytest.raises(QuicConnectError, match="the QUIC handshake failed|certificate"):
            await r.connect(store, lst, Receiver())
        assert sum(store.failures.values()) == 1
        # the gateway's own certificate as trust anchor, name checked against the IP: passes
        good = factory(pin_sha256=None, ca_file=certificate()[0])
        path = await r.connect(good, lst, Receiver())
        assert path.connected


@pytest_twisted.ensureDeferred
async def test_refused_port_fails_at_once() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    f = factory(connect_timeout_s=30)
    with pytest.raises(QuicConnectError, match="refused"):
        await f.connect(_reactor(), ("127.0.0.1", port), Receiver()).addTimeout(5, _reactor())


# ------------------------------------------------------------------------------ sizes, queue


@pytest_twisted.ensureDeferred
async def test_oversized_datagram_is_dropped_counted_and_the_path_goes_on() -> None:
    async with rig() as r:
        lst, path, back, server, _client = await pair(r)
        assert path.max_datagram == back.max_datagram == 1442
        path.send(os.urandom(1443))
        assert path.send_errors == 1 and path.pump.drops["oversize"] == 1
        path.send_batch([b"a" * 1442, b"b" * 2000, b"c"])
        assert path.send_errors == 2
        await wait_until(lambda: b"c" in server.data, "the rest of the batch")
        assert b"a" * 1442 in server.data
        await still_works(path, server)


@pytest_twisted.ensureDeferred
async def test_full_queue_drops_and_counts_never_blocks() -> None:
    async with rig() as r:
        f = factory(max_queue=4)
        lst, path, back, server, _client = await pair(r, f)
        before = len(server.got)
        for i in range(100):  # one reactor turn: nothing is flushed in between
            path.send(b"%03d" % i + b"x" * 1000)
        assert path.pump.drops["queue_full"] == 96 and path.send_errors == 96
        await wait_until(lambda: len(server.got) - before == 4, "the 4 queued datagrams")
        await _turns(0.1)
        assert len(server.got) - before == 4
        await still_works(path, server)


@pytest_twisted.ensureDeferred
async def test_a_head_that_fits_no_packet_is_evicted_not_wedged() -> None:
    """aioquic keeps such a head forever (issue #294); the pump evicts and counts it."""
    from jumping_quic import glue

    async with rig() as r:
        lst, path, back, server, _client = await pair(r)
        glue.pending(path.conn).append(b"z" * 1500)  # as if the limit shrank under it
        path.send(b"behind the big one")
        await wait_until(lambda: b"behind the big one" in server.data, "the queue to move")
        assert path.pump.drops["oversize"] == 1


@pytest_twisted.ensureDeferred
async def test_a_peer_that_opens_a_stream_is_closed_and_counted() -> None:
    async with rig() as r:
        lst, path, back, server, _client = await pair(r)
        sid = path.conn.get_next_available_stream_id()
        path.conn.send_stream_data(sid, b"GET / HTTP/1.1\r\n\r\n", end_stream=True)
        path.pump.flush()
        await wait_until(lambda: back.connected is False, "the gateway to close it")
        assert lst.drops["stream_opened"] == 1
        assert [reason for t, reason in server.lost if t is back] == ["protocol_error"]
        path2 = await r.connect(factory(), lst, Receiver())
        await still_works(path2, server)


@pytest_twisted.ensureDeferred
async def test_peer_frame_limit_lowers_max_datagram_and_none_fails_connect() -> None:
    async with rig() as r:
        server = Receiver()
        small = factory()
        real = small.framing.configure

        def limited(config: Any) -> None:
            real(config)
            config.max_datagram_frame_size = 1000

        small.framing.configure = limited  # this gateway accepts frames of 1000 bytes
        lst = r.listen(small, server)
        path = await r.connect(factory(), lst, Receiver())
        assert path.max_datagram == 1000 - 1 - 2
        path.send(b"q" * path.max_datagram)
        path.send(b"q" * (path.max_datagram + 1))  # would make the gateway close us
        assert path.send_errors == 1
        await wait_until(lambda: b"q" * 997 in server.data, "the largest allowed datagram")
        assert path.connected

        none = factory()
        real2 = none.framing.configure

        def no_datagrams(config: Any) -> None:
            real2(config)
            config.max_datagram_frame_size = None

        none.framing.configure = no_datagrams
        lst2 = r.listen(none, Receiver())
        with pytest.raises(QuicConnectError, match="accepts no QUIC DATAGRAM frames"):
            await r.connect(factory(), lst2, Receiver())
