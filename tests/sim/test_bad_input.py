"""Issue-4 bad input: forged or replayed probes and reattach messages, reattach from an
address that never proved it can receive, policies out of bounds."""

from __future__ import annotations

import pytest

from jumping.core import wire
from jumping.core.client import _PROBE
from jumping.core.node import _reattach_body
from jumping.core.outputs import Send
from jumping.core.policy import Policy, PolicyError
from jumping.testing.sim import SimNet, SimPath


def attached(links: int = 2, **policy: object) -> SimNet:
    net = SimNet(seed=21, links=links, policy=Policy.from_mapping(policy) if policy else None)
    net.start()
    net.run_for(3.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    return net


def control(net: SimNet, kind: int, body: bytes) -> bytes:
    s = net.client.session
    assert s is not None and s.current is not None
    kp = s.current
    data = kp.seal(kp.control_prefix, bytes((kind,)) + body)
    assert data is not None
    return data


def gw_session(net: SimNet):  # noqa: ANN201
    return next(iter(net.gateway.sessions.values()))


def test_replayed_reattach_and_probe_are_counted_drops_without_effect() -> None:
    net = attached()
    g = gw_session(net)
    before = (g.path, g.fsm.state_version)
    other = net.links[1].gateway_side
    reattach = control(net, wire.Control.REATTACH, _reattach_body(net.now, net.client.session))
    probe = control(net, wire.Control.PROBE, _PROBE.pack(1, b""))
    net.inject("gateway", other, probe)
    for _ in range(5):
        net.inject("gateway", other, probe)
    assert net.gateway.drops["REPLAY"] == 5
    net.inject("gateway", other, reattach)  # first copy: starts a validation only
    for _ in range(5):
        net.inject("gateway", other, reattach)
    assert net.gateway.drops["REPLAY"] == 10
    assert (g.path, g.fsm.state_version) == before


def test_forged_reattach_is_rejected_before_any_state_change() -> None:
    net = attached()
    g = gw_session(net)
    data = bytearray(
        control(net, wire.Control.REATTACH, _reattach_body(net.now, net.client.session))
    )
    data[-3] ^= 0x40
    out = net.inject("gateway", net.links[1].gateway_side, bytes(data))
    assert net.gateway.drops["AUTH_FAILED"] == 1
    assert not [o for o in out if isinstance(o, Send)]
    assert g.path is net.links[0].gateway_side and g.challenge is None


def test_stale_reattach_proof_is_invalid() -> None:
    net = attached()
    old = _reattach_body(net.now - 60.0, net.client.session)
    net.inject("gateway", net.links[1].gateway_side, control(net, wire.Control.REATTACH, old))
    assert net.gateway.drops["REATTACH_INVALID"] == 1
    assert gw_session(net).path is net.links[0].gateway_side
    res = [e for e in net.log["gateway"].events if e.event_type == "REATTACH_RESULT"]
    assert res[-1].reason_code == "REATTACH_VALIDATION_FAILED"


def test_reattach_from_unvalidated_address_is_challenged_not_followed() -> None:
    net = attached()
    g = gw_session(net)
    spoofed = SimPath("sim:spoof", ("10.201.1.2", 51820), ("192.0.2.66", 4444))
    body = _reattach_body(net.now, net.client.session)
    out = net.gateway.receive(net.now, spoofed, control(net, wire.Control.REATTACH, body))
    sends = [o for o in out if isinstance(o, Send)]
    # one challenge, smaller than what arrived, and no switch
    assert len(sends) == 1 and sends[0].path is spoofed
    assert len(sends[0].data) <= 3 * (wire.OVERHEAD + 1 + len(body))
    assert g.path is net.links[0].gateway_side
    # a response with the wrong nonce does nothing either
    net.gateway.receive(net.now, spoofed, control(net, wire.Control.RESPONSE, b"\x00" * 8))
    assert net.gateway.drops["UNEXPECTED_RESPONSE"] == 1 and g.path is net.links[0].gateway_side


def test_anti_amplification_bounds_bytes_sent_to_an_unvalidated_path() -> None:
    net = attached()
    spoofed = SimPath("sim:spoof", ("10.201.1.2", 51820), ("192.0.2.66", 4444))
    received = sent = 0
    for _ in range(40):
        net.now += 0.2
        data = control(net, wire.Control.REATTACH, _reattach_body(net.now, net.client.session))
        received += len(data)
        out = net.gateway.receive(net.now, spoofed, data)
        sent += sum(len(o.data) for o in out if isinstance(o, Send) and o.path is spoofed)
    assert 0 < sent <= 3 * received
    assert net.gateway.counters["anti_amplification_limited"] > 0


def test_rekey_on_switch_when_the_policy_asks() -> None:
    net = attached(rekey_on_switch=True)
    net.echo = True
    net.traffic(until=net.now + 3.0)
    net.run_for(0.5)
    sid = net.client.session.session_id  # type: ignore[union-attr]
    active = 0 if net.client.session.path is net.links[0].client_side else 1  # type: ignore[union-attr]
    net.links[active].up = False
    net.run_for(2.0)
    assert net.client.counters["rekey_on_switch"] == 1
    assert net.client.counters["rekeys"] >= 1 and net.client.session.session_id == sid  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"switch_cooldown_ms": 0}, "switch_cooldown_ms"),
        ({"replay_window": 1000}, "power of two"),
        ({"hysteresis": 0.5}, "hysteresis"),
        ({"max_switches_per_min": 10_000}, "max_switches_per_min"),
        ({"heartbeat_timeout_ms": 100, "heartbeat_interval_ms": 500}, "heartbeat_timeout_ms"),
        ({"rekey_on_switch": 1}, "true or false"),
        ({"bogus": 1}, "unknown"),
    ],
)
def test_out_of_bound_policies_are_rejected_whole(bad: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_mapping({"version": "7", **bad})
