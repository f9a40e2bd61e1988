"""A keypair whose keys expired while its session was idle stays as a tombstone (so that what
still arrives under it is named and counted) but gives up its replay window: the one shared
WIPED window, which holds no bits, passes every check (the packet reaches the KEY_EXPIRED or
KEY_WIPED count, never REPLAY) and accepts nothing."""

from __future__ import annotations

import math
from array import array

from jumping.core.fsm import Reason
from jumping.core.replay import WIPED, ReplayWindow
from jumping.core.session import Keypair, SpentKeys
from jumping.core.timers import GATEWAY_COUNT, T
from jumping.testing.sim import SimNet, capture, ipv4


def test_the_wiped_window_holds_nothing_and_accepts_nothing() -> None:
    assert isinstance(WIPED, ReplayWindow)
    assert WIPED.check(0) and WIPED.check(2**63)
    assert not WIPED.update(5) and WIPED.top == -1 and len(WIPED.blocks) == 0


def test_an_idle_sessions_expired_keys_keep_no_window() -> None:
    net = SimNet(seed=6)
    net.start()
    net.run_for(0.5)
    net.traffic(until=net.now + 1.0)
    late = capture(net, "client", ipv4("10.99.0.2", "10.99.0.1", b"late"))
    gw = net.gateway
    (s,) = gw.sessions.values()
    live = s.current
    assert live is not None and live.replay is not WIPED and live.replay.top >= 0
    net.run_for(net.policy.key_lifetime_s + 5.0)  # idle: no rekey, the keys expire
    (s,) = gw.sessions.values()
    spent = s.previous
    assert s.current is None and type(spent) is SpentKeys, "kept as a tombstone"
    assert (spent.session, spent.local_index) == (s, live.local_index)
    assert spent.created == -math.inf, "older than any lifetime: KEY_EXPIRED without a birth kept"
    assert gw.index[live.local_index] is spent, "the tombstone took the keypair's place"
    assert live.recv_aead is None and live.replay is WIPED, "the keypair itself is wiped"
    assert spent.recv_aead is None and spent.replay is WIPED and spent.seal(b"", b"x") is None
    assert all(k.replay is WIPED for k in net.client.session.keypairs() if k.recv_aead is None)  # type: ignore[union-attr]
    before = (gw.drops["KEY_EXPIRED"], gw.drops["REPLAY"])
    net.apply("gateway", gw.receive(net.now, net.links[0].gateway_side, late))
    assert (gw.drops["KEY_EXPIRED"], gw.drops["REPLAY"]) == (before[0] + 1, before[1])
    assert s.previous is spent and gw.index[live.local_index] is spent, "nothing changed"


def test_a_spent_keypair_is_small_and_goes_with_the_next_keys_or_the_session() -> None:
    """Issue 18: an idle gateway session keeps a 2-slot SpentKeys, not a wiped 11-slot
    Keypair; its index goes when the client's next handshake confirms, or with the session."""
    import sys

    net = SimNet(seed=8)
    net.start()
    net.run_for(0.5)
    gw = net.gateway
    (s,) = gw.sessions.values()
    live = s.current
    assert live is not None
    net.run_for(net.policy.key_lifetime_s + 5.0)
    spent = s.previous
    assert type(spent) is SpentKeys and sys.getsizeof(spent) + 9 * 8 <= sys.getsizeof(live)
    assert type(net.client.session.previous) is Keypair, "a client keeps its wiped keys"
    rx = s.rx_packets
    net.traffic(until=net.now + 1.0)  # the client's first packet rekeys
    net.run_for(1.5)
    assert s.current is not None and s.current is not live and s.rx_packets > rx
    assert live.local_index not in gw.index and type(s.previous) is not SpentKeys
    # a session that ends with a tombstone takes its index along
    net.run_for(net.policy.key_lifetime_s + 5.0)
    spent = s.previous
    assert type(spent) is SpentKeys and gw.index[spent.local_index] is spent
    gw._transition(net.now, s, Reason.OPERATOR_TERMINATED)
    assert spent.local_index not in gw.index and not gw.sessions


def test_a_gateway_session_and_its_tombstone_carry_nothing_of_the_clients() -> None:
    """Issue 18 (memory per idle session): a gateway's Session has no client-only slots, and a
    wiped keypair keeps no header prefixes; the client's NAT keepalive under expired keys
    still carries the right header (the gateway names it KEY_EXPIRED, test_node)."""
    import sys

    from jumping.core.session import ClientSession, Session

    net = SimNet(seed=7)
    net.start()
    net.run_for(0.5)
    (s,) = net.gateway.sessions.values()
    c = net.client.session
    assert type(s) is Session and isinstance(c, ClientSession)
    assert not hasattr(s, "pto") and c.pto > 0
    assert sys.getsizeof(s) + 12 * 8 <= sys.getsizeof(c)
    # the gateway's timers only: the client's (HEARTBEAT and after) are never armed there
    assert len(s.timers) == GATEWAY_COUNT == T.STATS + 1 and len(c.timers) == len(T)
    # raw doubles, not a list of float objects that every re-armed timer would replace
    assert s.timers.typecode == c.timers.typecode == "d" and s.timers.itemsize == 8
    assert isinstance(s.timers, array) and any(s.timers)
    assert sys.getsizeof(s.timers) == sys.getsizeof(array("d")) + 8 * GATEWAY_COUNT  # no spare
    live = s.current
    assert live is not None and live.data_prefix and live.control_prefix
    net.run_for(net.policy.key_lifetime_s + 5.0)
    assert net.gateway.counters["internal_error"] == 0
    assert type(s.previous) is SpentKeys and live.data_prefix == live.control_prefix == b""
    assert s.previous.data_prefix == s.previous.control_prefix == b""
