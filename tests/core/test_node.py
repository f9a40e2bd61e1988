"""Client and gateway cores talking over the seeded simulated network (virtual clock)."""

from __future__ import annotations

import pytest

from jumping.core import wire
from jumping.core.client import ClientCore
from jumping.core.fsm import Reason, State
from jumping.core.gateway import GatewayCore
from jumping.core.node import Peer
from jumping.core.noise import public_key
from jumping.core.outputs import Send
from jumping.core.policy import Policy
from jumping.testing.sim import SimNet, SimPath, capture, ipv4, seeded_rng

UP = ipv4("10.99.0.2", "10.99.0.1", b"hello gateway")
DOWN = ipv4("10.99.0.1", "10.99.0.2", b"hello client")


def attached(seed: int = 1, **kw: object) -> SimNet:
    net = SimNet(seed=seed, **kw)  # type: ignore[arg-type]
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    return net


def reasons(net: SimNet, side: str) -> list[str | None]:
    return [e.reason_code for e in net.events(side, "SESSION_STATE_CHANGE")]


def test_handshake_attaches_both_sides_with_one_session_id() -> None:
    net = attached()
    c = net.client.session
    g = next(iter(net.gateway.sessions.values()))
    assert c is not None and c.session_id == g.session_id and c.session_id != bytes(16)
    assert reasons(net, "client") == ["HANDSHAKE_OK"]
    assert reasons(net, "gateway") == ["HANDSHAKE_OK"]
    assert [e.event_type for e in net.events("gateway")][:3] == [
        "TRANSPORT_ATTACHED",
        "SESSION_STATE_CHANGE",
        "OWNERSHIP_CHANGE",
    ]
    assert g.owned and g.owner_token == 1


def test_data_flows_both_ways() -> None:
    net = attached()
    net.send_inner("client", UP)
    net.run_for(0.1)
    assert net.log["gateway"].tun == [UP]
    net.send_inner("gateway", DOWN)
    net.run_for(0.1)
    assert net.log["client"].tun == [DOWN]


def test_wire_overhead_and_no_session_id_in_clear() -> None:
    net = attached()
    sid = net.client.session.session_id  # type: ignore[union-attr]
    data = capture(net, "client", UP)
    assert len(data) == len(UP) + wire.OVERHEAD
    assert sid not in data and UP not in data


def test_gateway_drops_spoofed_inner_source() -> None:
    net = attached()
    net.send_inner("client", ipv4("10.99.0.7", "10.99.0.1"))
    net.run_for(0.1)
    assert net.log["gateway"].tun == []
    assert net.gateway.drops["SOURCE_NOT_ALLOWED"] == 1


def test_replayed_and_tampered_packets_are_counted_drops() -> None:
    net = attached()
    data = capture(net, "client", UP)
    g = next(iter(net.gateway.sessions.values()))
    path = net.links[0].gateway_side
    net.inject("gateway", path, data)
    version = g.fsm.state_version
    net.inject("gateway", path, data)
    assert net.gateway.drops["REPLAY"] == 1
    forged = bytearray(capture(net, "client", UP))
    forged[-1] ^= 1
    net.inject("gateway", path, bytes(forged))
    assert net.gateway.drops["AUTH_FAILED"] == 1
    assert net.log["gateway"].tun == [UP]
    assert g.fsm.state is State.ATTACHED and g.fsm.state_version == version


def test_idle_session_is_quiet_but_for_the_client_nat_keepalive() -> None:
    net = attached()
    net.run_for(5)  # the handshake's heartbeats are over by idle_after_ms
    link = net.links[0]
    up0, gw_sent0 = (
        link.delivered,
        net.gateway.sessions and next(iter(net.gateway.sessions.values())).tx_packets,
    )
    net.run_for(100)
    assert net.states() == ("ATTACHED", "ATTACHED")
    assert reasons(net, "client") == ["HANDSHAKE_OK"] and reasons(net, "gateway") == [
        "HANDSHAKE_OK"
    ]
    g = next(iter(net.gateway.sessions.values()))
    # 100 s idle: one keepalive every nat_keepalive_s (25 s), client -> gateway, unanswered
    assert link.delivered - up0 == 4, link.delivered - up0
    assert g.tx_packets == gw_sent0
    assert net.client.counters["nat_keepalives"] == 4
    # and it started no probe timeout: no probe, no suspicion
    assert net.client.counters["pto_suspect"] == 0 and net.client.counters["ack_probes"] == 0


def test_quiet_session_detects_a_dead_path_from_its_first_packet_after_idle() -> None:
    net = SimNet(seed=3, links=2)
    net.echo = True
    net.start()
    net.run_for(40)  # idle, quiet
    c = net.client.session
    assert c is not None and c.quiet
    dead = 0 if c.path is net.links[0].client_side else 1
    net.links[dead].up = False
    t0 = net.now
    net.traffic(until=net.now + 3.0, interval=0.01)
    net.run_for(3.0)
    assert c.path is net.links[1 - dead].client_side
    details = [e.fields.get("detail") for e in net.events("client", "SESSION_STATE_CHANGE")
               if e.reason_code == "TRANSPORT_DEAD"]  # fmt: skip
    assert details == ["probe_timeout"]
    first_back = min(t for t in net.delivered["client"] if t > t0)
    assert first_back - t0 < 0.5


def test_rekey_keeps_identity_and_bounds_keypairs() -> None:
    policy = Policy.from_mapping({"rekey_after_s": 10, "rekey_grace_ms": 2000})
    net = attached(policy=policy)
    sid = net.client.session.session_id  # type: ignore[union-attr]
    first = net.client.session.current  # type: ignore[union-attr]
    net.traffic(until=net.now + 35, interval=0.1)  # keys rotate while traffic flows
    net.run_for(35)
    s = net.client.session
    assert s is not None and s.session_id == sid
    assert net.client.counters["rekeys"] >= 3 and net.gateway.counters["rekeys"] >= 3
    assert s.current is not first and first is not None and first.send_aead is None
    assert len(net.gateway.index) <= 3 and len(net.client.index) <= 2
    assert reasons(net, "client") == ["HANDSHAKE_OK"]
    net.send_inner("client", UP)
    net.run_for(0.1)
    assert net.log["gateway"].tun[-1] == UP


def test_idle_session_does_not_rekey_its_keys_expire_and_the_next_packet_rekeys() -> None:
    policy = Policy.from_mapping({"rekey_after_s": 10, "key_expiry_grace_s": 5,
                                  "nat_keepalive_s": 4})  # fmt: skip
    net = attached(policy=policy)
    c = net.client.session
    g = next(iter(net.gateway.sessions.values()))
    assert c is not None
    sid, first = c.session_id, c.current
    net.run_for(40)
    assert net.client.counters["rekeys"] == 0 and net.gateway.counters["handshakes_answered"] == 1
    # wiped on both ends at rekey_after_s + key_expiry_grace_s
    assert c.current is None and g.current is None and first is not None
    assert first.send_aead is None and g.previous is not None and g.previous.recv_aead is None
    # the keepalives after that are refused before decryption, counted
    assert net.gateway.drops["KEY_EXPIRED"] >= 4 and net.gateway.drops["AUTH_FAILED"] == 0
    net.send_inner("client", UP)
    net.run_for(0.2)
    assert net.log["gateway"].tun[-1] == UP  # queued, sent under the new keys
    assert c.session_id == sid == g.session_id and c.current is not None
    assert net.client.counters["rekeys"] == 1 and net.gateway.counters["rekeys"] == 1
    assert reasons(net, "client") == ["HANDSHAKE_OK"] and reasons(net, "gateway") == [
        "HANDSHAKE_OK"
    ]
    net.send_inner("gateway", DOWN)
    net.run_for(0.1)
    assert net.log["client"].tun[-1] == DOWN


def test_session_stats_only_for_sessions_that_moved_bytes() -> None:
    net = attached(stats_interval_s=10.0, stats_idle_interval_s=600.0)
    net.traffic(until=net.now + 25, interval=0.5)
    net.run_for(25)
    busy = len(net.events("gateway", "SESSION_STATS"))
    assert 2 <= busy <= 3
    net.run_for(300)  # idle: one final record for the tail of the traffic, then nothing
    assert len(net.events("gateway", "SESSION_STATS")) <= busy + 1
    net.run_for(600)  # ... until the slow cadence
    assert len(net.events("gateway", "SESSION_STATS")) >= busy + 1


def test_blackhole_then_restore_reattaches_same_session() -> None:
    net = attached()
    sid = net.client.session.session_id  # type: ignore[union-attr]
    net.links[0].up = False
    net.traffic(until=net.now + 4.0, interval=0.1)  # the client has traffic to judge
    net.run_for(4.0)
    # the gateway sent nothing that expected an answer: it has nothing to judge
    assert net.states() == ("RECOVERING", "ATTACHED")
    net.links[0].up = True
    net.run_for(1.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    assert net.client.session.session_id == sid  # type: ignore[union-attr]
    got = reasons(net, "client")
    assert got[0] == "HANDSHAKE_OK" and got[2:] == ["TRANSPORT_DEAD", "REATTACH_OK"], got
    # lost heartbeat probes or silence, whichever the detector saw first
    assert got[1] in ("LOSS_THRESHOLD_EXCEEDED", "CONSECUTIVE_DROPS_EXCEEDED", "HEARTBEAT_TIMEOUT")
    assert reasons(net, "gateway") == ["HANDSHAKE_OK"]


def test_gateway_with_unanswered_data_asks_the_client_then_judges_the_silence() -> None:
    net = attached()
    net.run_for(10)  # quiet
    lost = net.gateway.seal(net.now, DOWN)  # sealed and sent, lost on the way
    net.apply("gateway", [o for o in lost if not isinstance(o, Send)])
    net.run_for(5)
    assert net.states() == ("ATTACHED", "ATTACHED")  # the client echoed the gateway's probe
    assert net.gateway.counters["silence_probes"] >= 1
    net.links[0].up = False
    net.send_inner("gateway", DOWN)
    net.run_for(3.5)
    assert net.states()[1] == "RECOVERING"
    assert reasons(net, "gateway")[-2:] == ["HEARTBEAT_TIMEOUT", "TRANSPORT_DEAD"]


def test_recovery_window_bounds_recovering_then_new_session_is_explicit() -> None:
    net = attached()
    old = net.client.session.session_id  # type: ignore[union-attr]
    net.links[0].up = False
    net.send_inner("gateway", DOWN)  # the gateway has something unanswered to judge
    net.traffic(until=net.now + 2.0, interval=0.1)  # and so has the client
    net.run_for(15)
    assert "RECOVERY_WINDOW_EXCEEDED" in reasons(net, "client")
    assert "RECOVERY_WINDOW_EXCEEDED" in reasons(net, "gateway")
    terminated = net.events("client", "SESSION_TERMINATED")
    assert terminated and terminated[0].session_id == old.hex()
    net.links[0].up = True
    net.run_for(3)
    assert net.states() == ("ATTACHED", "ATTACHED")
    assert net.client.session.session_id != old  # type: ignore[union-attr]


def test_state_versions_strictly_increase_in_events() -> None:
    net = attached()
    net.links[0].up = False
    net.run_for(15)
    net.links[0].up = True
    net.run_for(3)
    for side in ("client", "gateway"):
        per: dict[str | None, list[int]] = {}
        for e in net.events(side, "SESSION_STATE_CHANGE"):
            per.setdefault(e.session_id, []).append(e.state_version)
        for versions in per.values():
            assert versions == sorted(set(versions))


def test_unknown_client_is_rejected_before_any_session() -> None:
    net = attached()
    stranger = ClientCore(
        gateway_public_key=public_key(net.gateway_key), paths=[net.links[0].client_side],
        node_id="x", private_key=b"\x07" * 32, policy=net.policy, rng=seeded_rng(99), now=net.now,
    )  # fmt: skip
    init = [o for o in stranger.start(net.now) if isinstance(o, Send)][0].data
    before = len(net.gateway.sessions)
    net.inject("gateway", net.links[0].gateway_side, init)
    assert net.gateway.drops["UNKNOWN_PEER"] == 1 and len(net.gateway.sessions) == before


def test_replayed_initiation_is_dropped() -> None:
    net = SimNet(seed=3)
    init = [o for o in net.client.start(net.now) if isinstance(o, Send)][0].data
    path = net.links[0].gateway_side
    net.inject("gateway", path, init)
    net.inject("gateway", path, init)
    assert net.gateway.drops["HANDSHAKE_REPLAY"] == 1
    assert len(net.gateway.sessions) == 1


def test_cookie_reply_under_load_then_handshake_with_mac2() -> None:
    net = SimNet(seed=4)
    assert isinstance(net.gateway, GatewayCore)
    net.gateway.cookie_mode = "always"
    net.start()
    net.run_for(0.2)
    assert net.gateway.counters["cookie_replies"] == 1
    assert net.client.counters["cookies_received"] == 1
    # the client sent the attempt again at once with mac2, not a retry interval later
    assert net.client.counters["cookie_retries"] == 1
    assert net.client.counters["handshakes_sent"] == 2
    assert net.gateway.counters["cookie_valid"] == 1
    assert net.states() == ("ATTACHED", "ATTACHED")
    net.run_for(2.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    assert net.gateway.counters["cookie_replies"] == 1


def test_same_seed_same_run() -> None:
    def run(seed: int) -> list[tuple[str, str | None, int]]:
        net = attached(seed)
        net.links[0].loss = 0.3
        net.run_for(20)
        return [(e.event_type, e.reason_code, e.state_version) for e in net.log["client"].events]

    assert run(7) == run(7)


def test_handshake_fails_explicitly_when_gateway_never_answers() -> None:
    net = SimNet(seed=5)
    net.links[0].up = False
    net.start()
    net.run_for(16)
    assert reasons(net, "client") == ["HANDSHAKE_FAIL"]
    assert net.client.counters["handshakes_sent"] >= 10


def test_failed_handshakes_are_reported_under_ids_of_their_own() -> None:
    """A session that never got its SessionID from the gateway still has a unique id in
    its events: the next attempt never reuses it (no event 'after TERMINATED')."""
    net = SimNet(seed=5)
    net.links[0].up = False
    net.start()
    net.run_for(40)  # fails, backs off, starts again, fails again
    fails = [e for e in net.events("client", "SESSION_STATE_CHANGE")]
    assert [e.reason_code for e in fails][:2] == ["HANDSHAKE_FAIL", "HANDSHAKE_FAIL"]
    ids = [e.session_id for e in fails]
    assert len(set(ids)) == len(ids)
    assert bytes(16).hex() not in ids
    net.links[0].up = True
    net.run_for(20)
    ok = net.events("client", "SESSION_STATE_CHANGE")[-1]
    assert ok.reason_code == "HANDSHAKE_OK"
    assert ok.session_id == net.gateway.sessions[bytes.fromhex(ok.session_id)].sid_hex


def test_gateway_with_no_keys_does_not_route() -> None:
    rng = seeded_rng(1)
    gw = GatewayCore(
        peers=[Peer(public_key(rng(32)), ["10.99.0.2/32"])], node_id="g",
        private_key=rng(32), policy=Policy(), rng=rng, now=0.0,
    )  # fmt: skip
    sealed = gw.seal_batch(0.0, [DOWN])
    assert sealed.sends == [] and gw.drops["NO_ROUTE"] == 1
    out = gw.receive(0.0, SimPath("p", ("a", 1), ("b", 2)), b"")
    assert gw.drops["MALFORMED_HEADER"] == 1 and len(out) == 1


@pytest.mark.parametrize("reason", [Reason.OPERATOR_TERMINATED, Reason.OWNERSHIP_LOST])
def test_explicit_termination_tells_the_peer(reason: Reason) -> None:
    net = attached()
    sid = net.client.session.session_id  # type: ignore[union-attr]
    net.apply("gateway", net.gateway.terminate(net.now, sid, reason))
    net.run_for(0.1)
    assert reasons(net, "gateway")[-1] == reason.value
    assert reasons(net, "client")[-1] == reason.value
    assert net.client.session is None or net.client.session.session_id != sid


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_one_way_traffic_is_not_mistaken_for_a_dead_path(seed: int) -> None:
    """Nothing answers the client's packets (a one-way flow, the last ACKs of a transfer):
    an echo probe at a third of the probe timeout tells a quiet path from a dead one."""
    net = attached(seed=seed, links=2)
    assert not net.echo
    net.traffic(until=net.now + 2.0, interval=0.002)
    net.run_for(4.0)
    assert "TRANSPORT_DEAD" not in reasons(net, "client")
    assert net.client.counters["ack_probes"] > 0
    assert net.states() == ("ATTACHED", "ATTACHED")
    # and a path that really dies under the same one-way traffic is still left at once
    net.traffic(until=net.now + 2.0, interval=0.002)
    net.run_for(0.3)
    net.links[0].up = False
    net.run_for(1.0)
    assert "TRANSPORT_DEAD" in reasons(net, "client")


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_a_path_left_for_silence_is_not_chosen_again_until_it_answers(seed: int) -> None:
    net = SimNet(seed=seed, links=2)
    net.links[0].delay, net.links[1].delay = 0.001, 0.020  # the dead path looks much better
    net.start()
    net.run_for(3.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    net.traffic(until=net.now + 8.0, interval=0.002)
    net.run_for(0.3)
    net.links[0].up = False
    net.run_for(5.0)  # well past the switch cooldown, the dead path's stats still recent
    switches = net.events("client", "TRANSPORT_SWITCH")
    assert len(switches) == 1
    assert net.events("client", "TRANSPORT_SWITCH_DENIED") == []
    assert "POLICY_FORCED_RECOVERY" not in reasons(net, "client")
    net.links[0].up = True  # it answers probes again: a candidate like any other
    net.run_for(5.0)
    assert net.states() == ("ATTACHED", "ATTACHED")


def test_a_policy_reload_re_arms_every_timer_for_the_new_values() -> None:
    net = attached()
    net.run_for(10)  # quiet: only far-off timers are armed
    shorter = Policy.from_mapping({"version": "2", "session_max_lifetime_s": 5})
    for side in ("client", "gateway"):
        net.apply(side, net.core(side).set_policy(net.now, shorter))
    net.run_for(0.1)
    assert "SESSION_LIFETIME_EXCEEDED" in reasons(net, "client")
    assert "SESSION_LIFETIME_EXCEEDED" in reasons(net, "gateway")


def test_every_named_timer_has_its_handler_on_both_cores() -> None:
    from jumping.core.timers import HANDLERS

    net = attached()
    for core in (net.client, net.gateway):
        assert all(callable(getattr(core, name)) for name in HANDLERS)


def test_a_new_session_with_nothing_to_send_is_measured_once_then_goes_quiet() -> None:
    """At attach the client probes every path once (the active one by its first heartbeat,
    the candidate at once); with nothing to send it then goes quiet after one heartbeat
    interval, not after idle_after_ms of heartbeats. Traffic wakes it as any quiet session."""
    net = SimNet(seed=3, links=2)
    net.start()
    net.run_for(0.3)
    assert net.states() == ("ATTACHED", "ATTACHED")
    attach_probes = net.client.probe_seq
    assert attach_probes == 2  # one per path
    net.run_for(5.0)
    s = net.client.session
    assert s is not None and s.quiet
    assert net.client.counters["sessions_went_quiet"] == 1
    assert net.client.probe_seq == attach_probes  # nothing more while quiet
    net.traffic(until=net.now + 2.0, interval=0.05)
    net.run_for(1.0)
    assert not s.quiet and net.client.probe_seq > attach_probes  # measured again


def test_a_new_session_that_carries_traffic_keeps_its_heartbeat() -> None:
    net = SimNet(seed=3, links=2)
    net.start()
    net.run_for(0.3)
    net.traffic(until=net.now + 3.0, interval=0.05)
    net.run_for(2.5)
    s = net.client.session
    assert s is not None and not s.quiet
    assert net.client.counters["sessions_went_quiet"] == 0
    assert net.client.probe_seq >= 2 + 4  # heartbeats every 500 ms while it sends
