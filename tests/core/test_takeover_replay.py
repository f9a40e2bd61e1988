"""
A copied initiation replayed to another gateway of the cluster moves nothing: a gateway
claims or takes over a session only after the client proved the new keys on it, and the
ownership record carries the last accepted handshake timestamp, checked by every gateway.
Simulated cluster (gateways sharing a memory ownership store, the service's own ownership
glue), an attacker who copies datagrams off the client's link and sends them from its own
address.
"""

from __future__ import annotations

from typing import Any

from jumping.core import wire
from jumping.core.fsm import State
from jumping.core.handshake import Identity, Initiation
from jumping.core.noise import public_key
from jumping.core.outputs import Claim, Send
from jumping.core.policy import Policy
from jumping.testing.sim import ClusterNet, SimPath, seeded_rng

ATTACKER = ("198.51.100.66", 6666)


def one_owner(net: ClusterNet) -> None:
    owners: dict[bytes, str] = {}
    for name, gw in net.gateways.items():
        for sid, s in gw.sessions.items():
            if s.owned and net.alive[name]:
                assert sid not in owners, f"{sid.hex()} owned by {owners[sid]} and {name}"
                owners[sid] = name


def attached(seed: int, gateways: int = 3, **policy: Any) -> ClusterNet:
    net = ClusterNet(seed=seed, gateways=gateways, policy=Policy(**policy))
    net.checks.append(one_owner)
    caught: list[tuple[float, bytes]] = []
    plain_apply = net.apply

    def apply(side: str, outputs: Any) -> None:  # the attacker copies the client's sends
        outputs = list(outputs)
        if side == "client":
            for o in outputs:
                if isinstance(o, Send) and o.data[0] == wire.MessageType.HANDSHAKE_INIT:
                    caught.append((net.now, o.data))
        plain_apply(side, outputs)

    net.apply = apply  # type: ignore[method-assign]
    net.caught = caught  # type: ignore[attr-defined]
    net.start()
    net.run_for(2.0)
    s = net.client.session
    assert s is not None and s.fsm.state is State.ATTACHED
    return net


def serving(net: ClusterNet) -> str:
    s = net.client.session
    assert s is not None
    return next(link.name for link in net.links if link.client_side is s.path)


def snapshot(net: ClusterNet) -> tuple[Any, ...]:
    s = net.client.session
    assert s is not None
    return (
        net.owner(),
        s.session_id, s.fsm.state, s.fsm.state_version,
        {n: len(net.log[n].events) for n in net.log},
    )  # fmt: skip


def session_events(net: ClusterNet, since: dict[str, int]) -> list[Any]:
    """Events other than the node-wide aggregated security counters, since ``since``."""
    return [
        (n, e.event_type, e.reason_code)
        for n in net.log
        for e in net.log[n].events[since[n] :]
        if e.session_id is not None and e.event_type != "SESSION_STATS"
    ]


def replay(net: ClusterNet, gateway: str, data: bytes) -> list[Any]:
    """Send ``data`` to ``gateway`` from the attacker's own address; its outputs."""
    host = net.link(gateway).gateway_side.local_address
    path = SimPath(f"sim:{gateway}<attacker", host, ATTACKER)
    out = net.gateways[gateway].receive(net.now, path, data)
    net.apply(gateway, out)
    return out


def test_replayed_rekey_initiation_to_another_gateway_changes_nothing() -> None:
    """The issue's attack: one rekey initiation copied off the wire, sent to another
    gateway from any address. Before: that gateway claimed the session by CAS and the
    owner ended it with OWNERSHIP_LOST."""
    net = attached(seed=21, rekey_after_s=4)
    owner = serving(net)
    net.echo = True
    net.traffic(until=net.now + 8.0)
    net.run_for(5.0)  # the client rekeyed on its gateway
    s = net.client.session
    assert s is not None and net.client.counters["rekeys"] >= 1
    rekey = [d for _t, d in net.caught][-1]  # type: ignore[attr-defined]
    before = snapshot(net)
    thief = next(n for n in net.gateways if n != owner)
    outs = []
    for _ in range(3):
        outs.extend(replay(net, thief, rekey))
        net.run_for(0.3)
    after = snapshot(net)
    assert after[:4] == before[:4], (before, after)
    assert session_events(net, before[4]) == []
    assert not net.gateways[thief].sessions
    # refused before any answer: the record says the cluster accepted it (renewed at the
    # rekey), so it is not newer
    assert not [o for o in outs if isinstance(o, Send | Claim)], outs
    assert net.gateways[thief].drops["HANDSHAKE_REPLAY"] == 3
    assert net.store.records[s.sid_hex][0]["handshake_ts_ms"] == _init_ts(net, rekey)
    net.run_for(1.0)
    assert net.client.session is s and s.fsm.state is State.ATTACHED


def test_an_initiation_the_cluster_never_accepted_is_answered_but_never_claimed() -> None:
    """An on-path attacker holds back a fresh initiation of the client (newer than the
    record) and sends it to another gateway: the gateway answers (to the attacker), but
    nobody can prove the keys of that answer, so nothing is claimed, and the pending
    takeover expires without a trace in any event stream."""
    net = attached(seed=23)
    owner = serving(net)
    s = net.client.session
    assert s is not None
    hs = Initiation(
        Identity(net.client_key), public_key(net.gateway_key), seeded_rng(5), net.now + 1.0,
        99, s.session_id, s.fsm.state_version,
    )  # fmt: skip
    before = snapshot(net)
    thief = next(n for n in net.gateways if n != owner)
    replay(net, thief, hs.message)
    gw = net.gateways[thief]
    assert not gw.sessions  # pending: in no table, not counted as a session
    net.traffic(until=net.now + 4.0)
    net.run_for(net.gateways[thief].handshake_timeout + 1.0)
    after = snapshot(net)
    assert after[:4] == before[:4], (before, after)
    assert session_events(net, before[4]) == []
    assert gw.counters["adopt_requests"] == 1 and gw.counters["handshakes_answered"] == 1
    assert gw.counters["adopt_claims"] == 0
    assert gw.counters["adopt_expired"] == 1 and not gw._adopting
    assert not gw.index, "the answered keys were not forgotten"


def test_takeover_claims_after_the_proof_and_records_the_handshake() -> None:
    net = attached(seed=25)
    s = net.client.session
    assert s is not None
    first = serving(net)
    claims: list[tuple[str, float]] = []
    plain_apply = net.apply

    def apply(side: str, outputs: Any) -> None:
        outputs = list(outputs)
        claims.extend((side, net.now) for o in outputs if isinstance(o, Claim) and o.token)
        plain_apply(side, outputs)

    net.apply = apply  # type: ignore[method-assign]
    net.echo = True
    net.traffic(until=net.now + 6.0)
    net.fence(first)
    net.run_for(3.0)
    second = serving(net)
    assert second != first and s.fsm.state is State.ATTACHED
    record = net.store.records[s.sid_hex][0]
    resume = [d for _t, d in net.caught][-1]  # type: ignore[attr-defined]
    # the record names the accepted resume (client clock, ms) and the new owner
    assert record["owner"] == second and record["previous_owner"] == first
    assert record["handshake_ts_ms"] == _init_ts(net, resume)
    # exactly one claim, by the new owner
    assert [c[0] for c in claims] == [second]
    # the same resume replayed to the third gateway: a replay for the whole cluster
    third = next(n for n in net.gateways if n not in (first, second))
    before = snapshot(net)
    out = replay(net, third, resume)
    assert not [o for o in out if isinstance(o, Send)]
    assert net.gateways[third].drops["HANDSHAKE_REPLAY"] == 1, net.gateways[third].drops
    assert snapshot(net)[:4] == before[:4]


def test_claim_lost_after_the_proof_tells_the_client_and_leaves_no_trace() -> None:
    """Two gateways answered a resume; the client proved the keys of one, but the record
    changed between its read and the claim (the CAS fails): the client hears
    OWNERSHIP_LOST under the keys it proved, the gateway keeps nothing."""
    net = attached(seed=27, gateways=2)
    s = net.client.session
    assert s is not None
    first = serving(net)
    other = next(n for n in net.gateways if n != first)
    gw = net.gateways[other]
    real_check = net.owners[other].adopt

    def check_then_change(a: Any) -> None:
        real_check(a)  # read at token T ...
        cur = net.store.records[a.session_id]
        net.store.records[a.session_id] = (dict(cur[0]), next(net.store.tokens), cur[2])
        # ... and the record moves on before the claim (no watch: this is not a fence)

    net.owners[other].adopt = check_then_change  # type: ignore[method-assign]
    net.fence(first)
    net.run_for(0.6)
    assert gw.counters["adopt_claims"] >= 1
    assert gw.drops["ADOPT_CONFLICT"] >= 1
    assert not [e for e in net.log[other].events if e.session_id == s.sid_hex]
    assert net.client.counters["gateway_lost_ownership"] >= 2  # told by both gateways


def _init_ts(net: ClusterNet, data: bytes) -> int:
    from jumping.core.handshake import Response

    hs = Response(Identity(net.gateway_key), data, seeded_rng(1))
    return hs.timestamp_ms
