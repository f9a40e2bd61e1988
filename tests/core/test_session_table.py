"""The gateway's session table (policy ``session_table_size``, ``session_evict_idle_s``):
when it is full, a new session takes the place of the session that went quiet first, if
that one has moved no data for ``session_evict_idle_s`` (SESSION_EVICTED, the peer told);
otherwise the new session is refused (SESSION_TABLE_FULL, counted) and the active ones keep
everything. Real cores in the simulated network."""

from __future__ import annotations

from jumping.core.handshake import Identity, Initiation
from jumping.core.node import Peer
from jumping.core.noise import public_key
from jumping.core.policy import Policy
from jumping.testing.sim import SimNet, SimPath, ipv4, seeded_rng

B = seeded_rng(41)(32)


def full_table(evict_idle_s: int = 60) -> SimNet:
    """One attached session (client A) in a table of one; peer B configured too."""
    policy = Policy(session_table_size=1, session_evict_idle_s=evict_idle_s)
    net = SimNet(seed=4, policy=policy)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    a = Peer(public_key(net.client_key), ("10.99.0.2/32",), "a")
    b = Peer(public_key(B), ("10.99.0.3/32",), "b")
    net.apply("gateway", net.gateway.set_peers(net.now, [a, b]))
    return net


def b_connects(net: SimNet, n: int = 1) -> None:
    path = SimPath(f"sim:b{n}", ("10.201.1.2", 51820), ("10.201.9.1", 41000 + n))
    init = Initiation(Identity(B), net.gateway.me.public, seeded_rng(50 + n), net.now, 900 + n)
    net.apply("gateway", net.gateway.receive(net.now, path, init.message))


def a_session(net: SimNet) -> tuple[object, ...]:
    (s,) = [x for x in net.gateway.sessions.values() if x.peer.name == "a"]
    return (s.session_id, s.fsm.state_version, s.current.local_index, s.path)  # type: ignore[union-attr]


def test_an_active_session_is_never_evicted_the_new_one_is_refused() -> None:
    net = full_table()
    before, events = a_session(net), len(net.log["gateway"].events)
    net.traffic(until=net.now + 90.0)  # A moves data the whole time: longer than the idle limit
    b_connects(net)
    assert net.gateway.drops["SESSION_TABLE_FULL"] == 1
    assert net.gateway.counters["sessions_evicted"] == 0
    assert a_session(net) == before
    assert not [e for e in net.events("gateway", "SESSION_STATE_CHANGE")[events:]
                if e.fields.get("new_state") == "TERMINATED"]  # fmt: skip


def test_a_session_quiet_for_the_idle_limit_makes_room_and_is_told() -> None:
    net = full_table(evict_idle_s=60)
    net.run_for(30.0)  # quiet, but not for long enough
    b_connects(net, 1)
    assert net.gateway.drops["SESSION_TABLE_FULL"] == 1 and len(net.gateway.sessions) == 1
    net.run_for(40.0)  # now 70 s without data
    b_connects(net, 2)
    assert net.gateway.counters["sessions_evicted"] == 1
    assert [s.peer.name for s in net.gateway.sessions.values()] == ["b"]
    ended = [
        e
        for e in net.events("gateway", "SESSION_STATE_CHANGE")
        if e.fields.get("new_state") == "TERMINATED"
    ]
    assert [(e.reason_code, e.fields.get("detail")) for e in ended] == [
        ("SESSION_EVICTED", "session_table_full")
    ]
    net.run_for(0.2)
    told = [
        e
        for e in net.events("client", "SESSION_STATE_CHANGE")
        if e.fields.get("new_state") == "TERMINATED"
    ]
    assert told and told[0].reason_code == "SESSION_EVICTED", "the client was told"


def test_the_first_to_go_quiet_goes_first_and_a_session_that_woke_is_skipped() -> None:
    net = full_table(evict_idle_s=60)
    gw = net.gateway
    net.run_for(70.0)
    (a,) = gw.sessions.values()
    assert gw.quiet_sessions() == [a]
    net.send_inner("client", ipv4("10.99.0.2", "10.99.0.1", b"awake again"))
    net.run_for(0.1)
    assert gw.quiet_sessions() == [], "data woke it: no longer a candidate"
    b_connects(net)
    assert gw.drops["SESSION_TABLE_FULL"] == 1 and gw.counters["sessions_evicted"] == 0


def test_a_smaller_table_on_reload_ends_no_session() -> None:
    net = full_table()
    before = a_session(net)
    net.apply("gateway", net.gateway.set_policy(net.now, Policy(session_table_size=1)))
    assert net.gateway.max_sessions == 1 and a_session(net) == before


def test_the_quiet_list_keeps_the_order_sessions_went_quiet_in() -> None:
    """The eviction candidates are linked through the sessions themselves (no table entry
    per session): in, out from the head, the middle and the tail, in again at the end, and
    an ended session leaves no link behind."""
    from jumping.core.session import Session

    gw = full_table().gateway
    peer = next(iter(gw.peers.values()))
    ss = [Session(bytes([i]) * 16, peer, 1.0) for i in range(5)]
    for s in ss:
        gw._went_quiet(1.0, s)
    gw._went_quiet(1.0, ss[2])  # already in: keeps its place
    assert gw.quiet_sessions() == ss
    gw._woke(2.0, ss[0])
    gw._woke(2.0, ss[2])
    gw._woke(2.0, ss[4])
    gw._woke(2.0, ss[4])  # not in: nothing happens
    assert gw.quiet_sessions() == [ss[1], ss[3]]
    gw._went_quiet(3.0, ss[0])
    assert gw.quiet_sessions() == [ss[1], ss[3], ss[0]]
    assert gw._quiet_head is ss[1] and gw._quiet_tail is ss[0]
    for s in (ss[3], ss[1], ss[0]):
        gw._quiet_unlink(s)
    assert gw.quiet_sessions() == [] and gw._quiet_head is gw._quiet_tail is None
    assert all(s.quiet_prev is None and s.quiet_next is None for s in ss)
