"""
The listener's side of the provisional-path contract (``IProvisionalPath``): a QUIC
handshake authenticates the gateway, never the client, so until the node authenticated a
Jumping packet on a connection it is unauthenticated input. Its path objects are
provisional and kept in no table until ``confirm()``; its connection is bounded
(``max_unauthenticated``) and closed if nothing authenticates on it in time
(``handshake_timeout_s``).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from jumping_quic.client import QuicConnectError
from jumping_quic.options import QuicOptions
from quichelp import factory
from test_bad_input import rig, still_works
from test_migration import _rebind
from zope.interface.verify import verifyObject

from jumping.interfaces import IProvisionalPath
from jumping.testing.conformance import Receiver, wait_until


@pytest_twisted.ensureDeferred
async def test_a_new_address_gets_a_provisional_path_kept_only_after_confirm() -> None:
    async with rig() as r:
        f = factory()
        server = Receiver()
        lst = r.listen(f, server)
        path = await r.connect(f, lst, Receiver())
        (c,) = lst.connections
        path.send(b"one")
        await wait_until(lambda: len(server.got) == 1, "the first datagram")
        first = server.got[0][0]
        assert verifyObject(IProvisionalPath, first) and first.provisional is True
        assert not c.paths, "an unauthenticated address is in no table"
        path.send(b"two")
        await wait_until(lambda: len(server.got) == 2, "the second datagram")
        assert server.got[1][0] is not first, "a provisional path is not kept"
        first.confirm()
        assert first.provisional is False and list(c.paths.values()) == [first]
        first.confirm()  # idempotent
        path.send(b"three")
        await wait_until(lambda: len(server.got) == 3, "the third datagram")
        assert server.got[2][0] is first, "a confirmed path is the one the node keeps hearing"
        assert lst.provisional_paths == 2 and len(lst.paths) == 1


@pytest_twisted.ensureDeferred
async def test_unconfirmed_addresses_never_push_out_a_confirmed_path() -> None:
    from jumping_quic.server import PATHS_PER_CONNECTION

    async with rig() as r:
        f = factory()
        server = Receiver()
        lst = r.listen(f, server)
        path = await r.connect(f, lst, Receiver())
        path.send(b"hello")
        await wait_until(lambda: server.got, "the first datagram")
        live = server.got[0][0]
        live.confirm()
        for i in range(PATHS_PER_CONNECTION + 2):
            _rebind(path)
            path.send(b"hop %d" % i)
            await wait_until(lambda i=i: b"hop %d" % i in server.data, f"hop {i}")
        (c,) = lst.connections
        assert list(c.paths.values()) == [live] and live.connected
        assert lst.drops["paths_evicted"] == 0 and not server.lost


@pytest_twisted.ensureDeferred
async def test_a_connection_nothing_authenticates_on_is_closed_after_handshake_timeout() -> None:
    async with rig() as r:
        f = factory(handshake_timeout_s=1)
        server, client = Receiver(), Receiver()
        lst = r.listen(f, server)
        idle = await r.connect(f, lst, client)
        idle.send(b"never authenticated")
        kept = await r.connect(f, lst, Receiver())
        kept.send(b"authenticated")
        await wait_until(lambda: len(server.got) == 2, "both first datagrams")
        {d: p for p, d in server.got}[b"authenticated"].confirm()
        await wait_until(lambda: len(lst.connections) == 1, "the deadline", timeout=5)
        assert lst.drops["unauthenticated_timeout"] == 1 and lst.handshake_timeouts == 1
        await wait_until(lambda: client.lost, "the client told its path was closed")
        await still_works(kept, server, b"the confirmed connection stays")


@pytest_twisted.ensureDeferred
async def test_unauthenticated_connections_are_bounded() -> None:
    async with rig() as r:
        f = factory(connect_timeout_s=1, max_unauthenticated=2)
        server = Receiver()
        lst = r.listen(f, server)
        first = await r.connect(f, lst, Receiver())
        await r.connect(f, lst, Receiver())
        with pytest.raises(QuicConnectError):
            await r.connect(f, lst, Receiver())
        assert lst.drops["unauthenticated_full"] >= 1 and lst.refused_unauthenticated >= 1
        first.send(b"authenticate me")
        await wait_until(lambda: server.got, "the first datagram")
        server.got[0][0].confirm()  # an authenticated connection frees its slot
        third = await r.connect(f, lst, Receiver())
        await still_works(third, server)


def test_unauthenticated_bounds_are_validated() -> None:
    for bad in ({"max_unauthenticated": 0}, {"handshake_timeout_s": 0},
                {"handshake_timeout_s": True}):  # fmt: skip
        with pytest.raises(ValueError, match=f"quic: {next(iter(bad))} must be an integer"):
            QuicOptions.parse(**bad)


@pytest_twisted.ensureDeferred
async def test_the_listeners_counters_reach_the_nodes_metrics() -> None:
    from types import SimpleNamespace

    from jumping.core.policy import Policy
    from jumping.service.metrics import control_plane_metrics

    async with rig() as r:
        f = factory()
        server = Receiver()
        lst = r.listen(f, server)
        path = await r.connect(f, lst, Receiver())
        for tag in (b"one", b"two"):
            path.send(tag)
        await wait_until(lambda: len(server.got) == 2, "two datagrams")
        server.got[0][0].confirm()
        core = SimpleNamespace(policy=Policy())
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for m in control_plane_metrics("gw", core, [lst])
            if m.name.startswith("jumping_listener")
            for s in m.samples
        }
        who = ("listener", "QuicListener0")
        unauth = "jumping_listener_unauthenticated_total"
        assert samples[(unauth, (("counter", "provisional_paths"), who, ("node", "gw")))] == 2
        assert samples[(unauth, (("counter", "refused_unauthenticated"), who, ("node", "gw")))] == 0
        assert samples[("jumping_listener_paths", (who, ("node", "gw")))] == 1
