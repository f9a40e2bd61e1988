"""``GatewayCore.set_peers``: a reloaded ``[[peers]]`` list applied to a live gateway (the
same against running twistd nodes: tests/integration/test_control.py)."""

from __future__ import annotations

from jumping.core.node import Peer
from jumping.core.noise import public_key
from jumping.testing.sim import SimNet, ipv4, seeded_rng


def attached() -> SimNet:
    net = SimNet(seed=3)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    return net


def identity(net: SimNet) -> tuple[object, ...]:
    (s,) = net.gateway.sessions.values()
    return (s.session_id, s.fsm.state_version, s.current.local_index, s.path)  # type: ignore[union-attr]


def client_peer(net: SimNet, ips: tuple[str, ...]) -> Peer:
    return Peer(public_key(net.client_key), ips, "alice")


def test_changed_allowed_ips_apply_to_the_live_session_and_nothing_else() -> None:
    net = attached()
    before, events = identity(net), len(net.log["gateway"].events)
    delivered = len(net.log["gateway"].tun)
    net.send_inner("client", ipv4("10.99.0.33", "10.99.0.1", b"from a second address"))
    net.run_for(0.1)
    assert len(net.log["gateway"].tun) == delivered, "not allowed yet: dropped"
    out = net.gateway.set_peers(net.now, [client_peer(net, ("10.99.0.2/32", "10.99.0.33/32"))])
    net.apply("gateway", out)
    assert out == [] and len(net.log["gateway"].events) == events, "no event, no output"
    net.send_inner("client", ipv4("10.99.0.33", "10.99.0.1", b"from a second address"))
    net.run_for(0.1)
    assert net.log["gateway"].tun[-1].endswith(b"from a second address")
    # the gateway routes the new address to the session at once
    net.apply("gateway", net.gateway.seal(net.now, ipv4("10.99.0.1", "10.99.0.33", b"back")))
    net.run_for(0.1)
    assert net.log["client"].tun[-1].endswith(b"back")
    assert identity(net) == before
    assert net.gateway.peers[public_key(net.client_key)].name == "alice"


def test_an_added_peer_touches_no_session_a_removed_one_ends_with_policy_denied() -> None:
    net = attached()
    before, events = identity(net), len(net.log["gateway"].events)
    other = Peer(public_key(seeded_rng(99)(32)), ("10.99.0.9/32",), "dave")
    keep = client_peer(net, ("10.99.0.2/32",))
    net.apply("gateway", net.gateway.set_peers(net.now, [keep, other]))
    assert set(net.gateway.peers) == {keep.public_key, other.public_key}
    assert identity(net) == before and len(net.log["gateway"].events) == events
    net.apply("gateway", net.gateway.set_peers(net.now, [other]))
    net.run_for(0.2)
    assert net.gateway.sessions == {}
    ended = [
        e
        for e in net.events("gateway", "SESSION_STATE_CHANGE")
        if e.fields.get("new_state") == "TERMINATED"
    ]
    assert [(e.reason_code, e.fields.get("detail")) for e in ended] == [
        ("POLICY_DENIED", "peer_removed")
    ]
    told = [
        e
        for e in net.events("client", "SESSION_STATE_CHANGE")
        if e.fields.get("new_state") == "TERMINATED"
    ]
    assert told and told[0].reason_code == "POLICY_DENIED", "the client was told"
    assert keep.public_key not in net.gateway.peers
