"""
Session takeover inside a cluster (issue 5 item 3) on the simulated network with the memory
ownership backend shared by the gateways: a client whose gateway dies or is fenced resumes
the same SessionID on another gateway; forged, stale or concurrent takeovers are refused.
"""

from __future__ import annotations

from jumping.core.fsm import State
from jumping.core.handshake import Identity, Initiation
from jumping.core.node import Peer
from jumping.core.noise import public_key
from jumping.core.policy import Policy
from jumping.core.session import Session
from jumping.service.ownership import check_adoption
from jumping.testing.sim import ClusterNet, seeded_rng


def one_owner(net: ClusterNet) -> None:
    """Invariant 2 after every step: at most one gateway holds the session as owned."""
    owners = {}
    for name, gw in net.gateways.items():
        for sid, s in gw.sessions.items():
            if s.owned and net.alive[name]:
                assert sid not in owners, f"{sid.hex()} owned by {owners[sid]} and {name}"
                owners[sid] = name


def attached(seed: int = 1, gateways: int = 2) -> ClusterNet:
    net = ClusterNet(seed=seed, gateways=gateways)
    net.checks.append(one_owner)
    net.start()
    net.run_for(2.0)
    s = net.client.session
    assert s is not None and s.fsm.state is State.ATTACHED
    return net


def serving(net: ClusterNet) -> str:
    """The gateway whose path the client is bound to."""
    s = net.client.session
    assert s is not None
    return next(link.name for link in net.links if link.client_side is s.path)


def state_versions(net: ClusterNet) -> list[int]:
    return [e.state_version for e in net.events("client", "SESSION_STATE_CHANGE")]


def test_gateway_dies_client_resumes_same_session_on_another() -> None:
    net = attached()
    s = net.client.session
    assert s is not None
    sid, v0 = s.session_id, s.fsm.state_version
    first = serving(net)
    assert net.owner() is not None and net.owner()[0] == first  # type: ignore[index]
    token0 = net.owner()[1]  # type: ignore[index]
    net.echo = True
    net.traffic(until=net.now + 12.0)
    net.run_for(1.0)
    killed_at = net.now
    net.kill(first)
    net.run_for(8.0)
    s = net.client.session
    assert s is not None and s.session_id == sid, "a new session instead of a takeover"
    assert s.fsm.state is State.ATTACHED
    assert s.fsm.state_version > v0
    versions = state_versions(net)
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    second = serving(net)
    assert second != first
    owner = net.owner()
    assert owner is not None and owner[0] == second and owner[1] > token0
    # the new gateway: OWNERSHIP_CHANGE with its token, then RECOVERING -> ATTACHED
    g = net.events(second)
    oc = [e for e in g if e.event_type == "OWNERSHIP_CHANGE"]
    assert oc and oc[-1].fields["owner"] == second and oc[-1].fields["fencing_token"] == owner[1]
    ssc = [e for e in g if e.event_type == "SESSION_STATE_CHANGE"]
    assert [(e.fields["previous_state"], e.fields["new_state"], e.reason_code) for e in ssc] == [
        ("RECOVERING", "ATTACHED", "REATTACH_OK")
    ]
    assert all(e.session_id == sid.hex() for e in g if e.session_id is not None)
    # the client: a TRANSPORT_SWITCH to the new gateway, REATTACH_OK, no new session
    c = net.events("client")
    assert any(e.event_type == "TRANSPORT_SWITCH" for e in c)
    assert not [e for e in c if e.event_type == "SESSION_TERMINATED"]
    # traffic flows again through the new gateway
    later = [t for t, gw, _ in net.forwarded if gw == second and t > killed_at]
    assert later, "no data forwarded by the new owner"
    assert net.log["client"].tun, "no echo came back"


def test_fenced_gateway_tells_client_which_resumes_elsewhere() -> None:
    net = attached(seed=3, gateways=3)
    s = net.client.session
    assert s is not None
    sid, v0 = s.session_id, s.fsm.state_version
    first = serving(net)
    net.echo = True
    net.traffic(until=net.now + 6.0)
    net.run_for(0.5)
    fenced_at = net.now
    net.fence(first)  # its backend failed closed: it stops forwarding, tells the client
    assert not any(x.owned for x in net.gateways[first].sessions.values())
    net.run_for(2.0)
    s = net.client.session
    assert s is not None and s.session_id == sid and s.fsm.state is State.ATTACHED
    assert s.fsm.state_version > v0
    assert serving(net) != first
    assert net.client.counters["gateway_lost_ownership"] == 1
    ended = net.events(first, "SESSION_TERMINATED")
    assert ended and ended[-1].reason_code == "OWNERSHIP_LOST"
    # the fenced gateway forwarded nothing after it lost the session
    assert not [t for t, gw, _ in net.forwarded if gw == first and t > fenced_at]
    took = [
        e for e in net.events("client", "SESSION_STATE_CHANGE") if e.reason_code == "REATTACH_OK"
    ]
    assert took and (took[-1].state_version > v0)


def test_no_other_gateway_can_take_it_terminates_explicitly() -> None:
    net = attached(seed=5, gateways=2)
    s = net.client.session
    assert s is not None
    sid = s.session_id
    first = serving(net)
    other = next(n for n in net.gateways if n != first)
    net.kill(other)
    net.fence(first)
    net.run_for(net.policy.recovery_window_ms / 1000 + 1.0)
    ends = [e for e in net.events("client", "SESSION_STATE_CHANGE") if e.session_id == sid.hex()]
    assert ends[-1].fields["new_state"] == "TERMINATED"
    assert ends[-1].reason_code == "RECOVERY_WINDOW_EXCEEDED"


def _forged_initiation(
    net: ClusterNet, key: bytes, sid: bytes, version: int, index: int = 77
) -> bytes:
    hs = Initiation(
        Identity(key), public_key(net.gateway_key), seeded_rng(99), net.now + 1, index, sid,
        version,
    )  # fmt: skip
    return hs.message


def test_takeover_with_wrong_client_key_refused() -> None:
    net = attached(seed=7)
    s = net.client.session
    assert s is not None
    first = serving(net)
    other = next(n for n in net.gateways if n != first)
    # a second, legitimate client of the cluster tries to resume the first client's session
    mallory = seeded_rng(1234)(32)
    gw = net.gateways[other]
    gw.peers[public_key(mallory)] = Peer(public_key(mallory), ["10.99.0.3/32"])
    link = net.link(other)
    before = net.owner()
    out = gw.receive(
        net.now,
        link.gateway_side,
        _forged_initiation(net, mallory, s.session_id, s.fsm.state_version + 5),
    )
    net.apply(other, out)
    assert gw.drops["ADOPT_WRONG_CLIENT"] == 1
    assert s.session_id not in gw.sessions
    assert net.owner() == before  # nothing moved
    assert not [o for o in out if type(o).__name__ == "Send"]


def test_takeover_with_stale_state_version_refused() -> None:
    net = attached(seed=9, gateways=3)
    s = net.client.session
    assert s is not None
    first = serving(net)
    net.fence(first)
    net.run_for(2.0)  # the client resumed on another gateway at a newer state_version
    assert s.fsm.state is State.ATTACHED
    owner = net.owner()
    assert owner is not None
    record = net.store.records[s.sid_hex][0]
    third = next(n for n in net.gateways if n not in (first, owner[0]))
    gw = net.gateways[third]
    link = net.link(third)
    # a replayed / old resume (the client's own key, an older state_version)
    msg = _forged_initiation(net, net.client_key, s.session_id, record["state_version"] - 1)
    net.apply(third, gw.receive(net.now, link.gateway_side, msg))
    assert gw.drops["ADOPT_STALE_VERSION"] == 1
    assert net.owner() == owner
    assert s.session_id not in gw.sessions
    # and the SIEM hears of it: an aggregated STALE_STATE_VERSION (the
    # service ticks every core at start, which arms its node-wide timers)
    net.apply(third, gw.tick(net.now))
    net.run_for(gw.security_interval + 0.1)
    (sec,) = [
        e
        for e in net.events(third, "SECURITY_EVENT")
        if e.fields["violation_type"] == "STALE_STATE_VERSION"
    ]
    assert sec.fields["count"] == 1, sec.fields


def test_two_gateways_racing_to_adopt_exactly_one_wins() -> None:
    net = attached(seed=11, gateways=3)
    s = net.client.session
    assert s is not None
    first = serving(net)
    racers = [n for n in net.gateways if n != first]
    from jumping.core.outputs import Adopt

    a = Adopt(s.sid_hex, public_key(net.client_key).hex(), s.fsm.state_version, 1)
    # both read the record before either writes (a real race); then both CAS
    reads = {}
    for n in racers:
        net.backends[n].get(s.sid_hex).addCallback(lambda r, n=n: reads.__setitem__(n, r))
    results = {}
    for n in racers:
        record, token = reads[n]
        d = net.backends[n].claim(s.sid_hex, {"client_public_key": a.client_key,
                                              "state_version": a.state_version, "owner": n},
                                  token)  # fmt: skip
        d.addCallbacks(lambda t, n=n: results.__setitem__(n, t),
                       lambda f, n=n: results.__setitem__(n, None))  # fmt: skip
    winners = [n for n, t in results.items() if t is not None]
    assert len(winners) == 1
    # and through the service's check: both may answer (nothing is claimed by a check),
    # the claims race on the one token they read and exactly one wins
    net2 = attached(seed=13, gateways=3)
    s2 = net2.client.session
    assert s2 is not None
    first2 = serving(net2)
    ts = net2.store.records[s2.sid_hex][0]["handshake_ts_ms"] + 1
    a2 = Adopt(s2.sid_hex, public_key(net2.client_key).hex(), s2.fsm.state_version, ts)
    others = [x for x in net2.gateways if x != first2]
    checked = []
    for n in others:
        check_adoption(net2.backends[n], a2).addCallback(checked.append)
    assert [e for _, e, _ in checked] == [None, None] and len({t for t, _, _ in checked}) == 1
    claims = []
    for n in others:
        rec = {"client_public_key": a2.client_key, "state_version": a2.state_version + 1,
               "owner": n, "handshake_ts_ms": ts}  # fmt: skip
        net2.backends[n].claim(s2.sid_hex, rec, checked[0][0]).addCallbacks(
            lambda t: claims.append(t), lambda f: claims.append(None)
        )
    assert sorted(t is not None for t in claims) == [False, True]
    # once one claimed it, the same initiation is a replay for everyone
    again = check_adoption(net2.backends[others[0]], a2).result
    assert again[0] is None and again[1] in ("stale_state_version", "stale_handshake")


def test_single_gateway_unknown_session_behaviour_unchanged() -> None:
    """Without a cluster (adopt_sessions off) an unknown SessionID gets a new session, as
    before, and no Adopt is ever asked for."""
    from jumping.core.gateway import GatewayCore

    ck, gk = seeded_rng(5)(32), seeded_rng(6)(32)
    gw = GatewayCore(
        peers=[Peer(public_key(ck), ["10.99.0.2/32"])], node_id="gw", private_key=gk,
        policy=Policy(), rng=seeded_rng(7), now=1000.0,
    )  # fmt: skip
    hs = Initiation(Identity(ck), public_key(gk), seeded_rng(8), 1000.0, 5, b"x" * 16, 3)
    out = gw.receive(1000.0, object(), hs.message)
    assert not [o for o in out if type(o).__name__ == "Adopt"]
    assert len(gw.sessions) == 1 and b"x" * 16 not in gw.sessions
    assert isinstance(next(iter(gw.sessions.values())), Session)


def test_adopt_output_is_frozen_and_peer_input_never_raises() -> None:
    import dataclasses

    from jumping.core.outputs import Adopt

    a = Adopt("ab" * 16, "cd" * 32, 3, 1)
    try:
        a.state_version = 4  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("Adopt must be frozen")
    net = attached(seed=17)
    gw = next(iter(net.gateways.values()))
    # answers for adoptions nobody asked for, or with junk ids: counted, never raised
    assert gw.adoption_checked(net.now, "zz", None, "conflict")
    gw.adoption_checked(net.now, "ab" * 16, 42, None)
    assert gw.drops["ADOPT_UNKNOWN"] == 2
