"""Audits of real streams. state_version is per (node, session): a stream that merges a client's and a gateway's
events (one Kafka topic, one index) shows each version twice and passes ``jumpctl audit``;
a version that really goes back on one node fails it. The events come from the real cores
(the simulated network) through the real event pipeline, merged in emission order. The
audit reports the outage each switch's ``outage_ms`` says the user felt. A gateway that failed
closed (OWNERSHIP_LOST) and then takes the same session over again passes; the same history
with the takeover's fencing token not higher, or another termination reason, does not."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer

from jumping.audit import audit_events, format_summary, format_timeline
from jumping.chain import chain_hash
from jumping.core.outputs import Emit
from jumping.service.events import EventPipeline
from jumping.testing.sim import ClusterNet, SimNet

KEY = bytes(range(32))


def merged_failover_stream(traffic: bool = False) -> list[dict[str, Any]]:
    """A session that fails over from path 0 to path 1 (a silent death), both nodes' events
    in one list; with ``traffic``, a packet every 2 ms echoed by the gateway throughout."""
    out: list[dict[str, Any]] = []

    class Sink:
        def emit(self, event: dict[str, Any]) -> None:
            out.append(event)

    pipes: dict[str, EventPipeline] = {}

    class MergedNet(SimNet):
        def apply(self, side: str, outputs: list[Any]) -> None:
            for o in outputs:
                if isinstance(o, Emit):
                    pipes[side].emit(o)
                super().apply(side, [o])

    net = MergedNet(seed=3, links=2)
    for side in ("client", "gateway"):
        pipes[side] = EventPipeline(
            net.core(side).node_id, [Sink()], KEY, lambda: "default", lambda: net.now
        )
    net.echo = traffic
    net.start()
    net.run_for(1.0)
    if traffic:
        net.traffic(until=net.now + 6.0)
        net.run_for(1.0)
    net.links[0].up = False
    if not traffic:  # a few packets: a session with nothing to send judges no path
        net.traffic(until=net.now + 1.0, interval=0.1)
    net.run_for(5.0)
    return out


def _rechain(events: list[dict[str, Any]], node: str) -> None:
    prev = None
    for e in events:
        if e["node_id"] != node:
            continue
        if prev is not None:
            e["prev_hash"] = chain_hash(KEY, prev)
        prev = e


def test_a_merged_client_and_gateway_stream_passes() -> None:
    events = merged_failover_stream()
    nodes = {e["node_id"] for e in events}
    assert nodes == {"c1", "gw1"}
    changes = [e for e in events if e["event_type"] == "SESSION_STATE_CHANGE"]
    assert any(e["new_state"] == "RECOVERING" for e in changes)
    # the same (session, state_version) from both nodes: what a per-session checker trips on
    per_version = Counter(
        (e["session_id"], e["state_version"]) for e in changes if e["session_id"] != "0" * 32
    )
    assert any(n >= 2 for n in per_version.values()), per_version
    report = audit_events(events, KEY)
    assert report.ok, [str(v) for v in report.violations]
    assert set(report.nodes) == {"c1", "gw1"}


def test_a_real_version_regression_on_one_node_fails() -> None:
    events = merged_failover_stream()
    gw = [
        i
        for i, e in enumerate(events)
        if e["node_id"] == "gw1" and e["event_type"] == "SESSION_STATE_CHANGE"
    ]
    assert len(gw) >= 3
    victim = events[gw[-1]]
    victim["state_version"] = events[gw[0]]["state_version"]  # back to the first transition's
    _rechain(events, "gw1")  # a consistent chain: only the version is wrong
    report = audit_events(events, KEY)
    assert set(report.by_check()) == {"STATE_VERSION"}, [str(v) for v in report.violations]
    assert {v.event["node_id"] for v in report.violations} == {"gw1"}
    assert any(v.index == gw[-1] for v in report.violations)


def test_the_audit_reports_the_outage_as_felt() -> None:
    events = merged_failover_stream(traffic=True)
    switches = [e for e in events if e["event_type"] == "TRANSPORT_SWITCH"]
    assert {e["node_id"] for e in switches} == {"c1", "gw1"}
    worst = max(switches, key=lambda e: e["outage_ms"])
    assert worst["outage_ms"] >= 100 > max(e["switch_latency_ms"] for e in switches)
    report = audit_events(events, KEY)
    assert report.ok, [str(v) for v in report.violations]
    by_node = {t.node_id: t for t in report.tracks if t.outages}
    for e in switches:
        t = by_node[e["node_id"]]
        assert (e["ts_ms"] - e["outage_ms"], e["ts_ms"]) in t.outages
    summary = format_summary(report)
    assert f"longest {worst['outage_ms']} ms" in summary, summary
    assert f"outage {worst['outage_ms']} ms" in format_timeline(report)
    # RECOVERING itself is short: the audit's other number is not the outage
    assert max(t.longest_recovering_ms for t in report.tracks) < worst["outage_ms"]


def retaken_stream() -> list[dict[str, Any]]:
    """A cluster of two gateways, the session on gw1. gw1's backend fails closed (it ends
    its copy with OWNERSHIP_LOST and tells the client); gw2's backend refuses every claim
    (etcd without its quorum), so gw2 tells the client OWNERSHIP_LOST in turn, and the
    client's next resume lands on gw1 again, which takes the session over from its own
    lapsed record (stop 45's fresh CI: test_e_quorum_lost... had gw1 win the takeover).
    Every node's events, through the real pipeline, in emission order."""
    out: list[dict[str, Any]] = []

    class Sink:
        def emit(self, event: dict[str, Any]) -> None:
            out.append(event)

    pipes: dict[str, EventPipeline] = {}

    class Net(ClusterNet):
        def apply(self, side: str, outputs: Any) -> None:
            for o in outputs:
                if isinstance(o, Emit):
                    pipes[side].emit(o)
                super().apply(side, [o])

    net = Net(seed=3, gateways=2)
    for side in ("client", "gw1", "gw2"):
        pipes[side] = EventPipeline(
            net.core(side).node_id, [Sink()], KEY, lambda: "default", lambda: net.now
        )
    net.start()
    net.run_for(2.0)
    assert net.owner() is not None and net.owner()[0] == "gw1"  # type: ignore[index]

    def no_quorum(*args: Any, **kw: Any) -> defer.Deferred[int]:
        return defer.fail(ConnectionError("etcd: no leader"))

    net.backends["gw2"].claim = no_quorum
    net.echo = True
    net.traffic(until=net.now + 6.0)
    net.run_for(0.5)
    net.fence("gw1")
    net.run_for(4.0)
    s = net.client.session
    assert s is not None and s.fsm.state.value == "ATTACHED"
    return out


def _gw1(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e for e in events if e["node_id"] == "gw1" and e["event_type"] == event_type]


def test_a_failed_closed_gateway_that_takes_the_session_over_again_passes() -> None:
    events = retaken_stream()
    sid = {e["session_id"] for e in _gw1(events, "SESSION_TERMINATED")}
    assert len(sid) == 1
    ended = _gw1(events, "SESSION_TERMINATED")[0]
    assert ended["reason_code"] == "OWNERSHIP_LOST"
    claims = _gw1(events, "OWNERSHIP_CHANGE")
    assert [c["owner"] for c in claims] == ["gw1", "gw1"]
    assert claims[1]["fencing_token"] > claims[0]["fencing_token"]
    assert claims[0]["seq"] < ended["seq"] < claims[1]["seq"]
    back = [e for e in _gw1(events, "SESSION_STATE_CHANGE") if e["seq"] > ended["seq"]]
    assert [(e["previous_state"], e["new_state"], e["reason_code"]) for e in back] == [
        ("RECOVERING", "ATTACHED", "REATTACH_OK")
    ]
    assert not [e for e in events if e["node_id"] == "gw2" and e["session_id"] in sid]
    report = audit_events(events, KEY)
    assert report.ok, [str(v) for v in report.violations]
    tracks = sorted(t.label for t in report.tracks if t.node_id == "gw1")
    assert tracks == [f"{ended['session_id']}#1@gw1", f"{ended['session_id']}@gw1"]


def _after_terminated_only(events: list[dict[str, Any]]) -> list[str]:
    _rechain(events, "gw1")
    report = audit_events(events, KEY)
    assert set(report.by_check()) == {"AFTER_TERMINATED"}, [str(v) for v in report.violations]
    return [v.event["event_type"] for v in report.violations]


def test_a_retake_without_a_higher_fencing_token_is_after_terminated() -> None:
    events = retaken_stream()
    first, again = _gw1(events, "OWNERSHIP_CHANGE")
    again["fencing_token"] = first["fencing_token"]
    assert _after_terminated_only(events)[0] == "OWNERSHIP_CHANGE"


def test_events_after_an_ownership_lost_end_without_a_claim_are_after_terminated() -> None:
    events = retaken_stream()
    again = _gw1(events, "OWNERSHIP_CHANGE")[1]
    again["owner"] = None  # a release: nothing takes the session over
    again["fencing_token"] = None
    kinds = _after_terminated_only(events)
    assert "TRANSPORT_ATTACHED" in kinds and "SESSION_STATE_CHANGE" in kinds


def test_a_retake_after_another_termination_reason_is_after_terminated() -> None:
    events = retaken_stream()
    ended = _gw1(events, "SESSION_TERMINATED")[0]
    to_end = next(e for e in _gw1(events, "SESSION_STATE_CHANGE") if e["new_state"] == "TERMINATED")
    ended["reason_code"] = to_end["reason_code"] = "OPERATOR_TERMINATED"
    assert _after_terminated_only(events)[0] == "OWNERSHIP_CHANGE"
