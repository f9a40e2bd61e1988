"""
The parts of the etcd backend alone, without etcd (no cluster fixture: nothing here starts
one): the record envelope (jumping_etcd.envelope), the lease keeper (jumping_etcd.lease)
on a fake cluster and an injected clock, and the facade's glue.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from jumping_etcd.backend import EtcdOwnership, _Own
from jumping_etcd.client import Unreachable, b64, unb64
from jumping_etcd.envelope import (
    current,
    decode,
    encode,
    heartbeat_key,
    heartbeat_seq,
    heartbeat_value,
    prefix_end,
    session_key,
    session_of,
)
from jumping_etcd.lease import LeaseKeeper
from jumping_etcd.liveness import LeaseDeadline
from twisted.internet.task import Clock as ReactorClock

from jumping.errors import OwnershipUnavailable

PREFIX = "/j/"
A, B, C = "aa01", "bb02", "cc03"
MALFORMED = {"op": "foreign", "record": {"malformed": True}, "w": None}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Reactor:
    """callFromThread and callLater(0) recorded, run by the test with :meth:`run`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def callFromThread(self, f: Any, *a: Any) -> None:
        self.calls.append((f, a))

    def callLater(self, _delay: float, f: Any, *a: Any) -> None:
        self.calls.append((f, a))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for f, a in calls:
            f(*a)


# ------------------------------------------------------------------ envelope
def test_envelope_round_trip_keeps_the_record_and_the_writer() -> None:
    record = {"client_public_key": "ab" * 32, "state_version": 7, "owner": "gw-a"}
    value = encode("gw-a", "claim", "n0nce", record)
    assert decode({"value": value}) == {
        "v": 1, "node": "gw-a", "op": "claim", "w": "n0nce", "record": record,
    }  # fmt: skip
    # compact, sorted keys: the same write always stores the same bytes
    assert unb64(value) == json.dumps(json.loads(unb64(value)), separators=(",", ":"),
                                      sort_keys=True).encode()  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        "!!not base64!!",
        b64("not json"),
        b64("[1, 2]"),
        b64(json.dumps({"v": 2, "node": "x", "op": "claim", "w": "n", "record": {}})),
        b64(json.dumps({"v": 1, "node": "x", "op": "claim", "w": "n", "record": "r"})),
        b64(json.dumps({"v": 1, "node": "x", "op": "claim", "w": "n"})),
        b64(b"\xff\xfe"),
        "",
    ],
)
def test_decode_flags_anything_but_an_envelope_as_foreign(value: str) -> None:
    env = decode({"value": value})
    assert env == MALFORMED
    env["record"]["malformed"] = "changed"  # each answer is a fresh dict
    assert decode({"value": value}) == MALFORMED


def test_decode_flags_a_record_without_value() -> None:
    assert decode({}) == MALFORMED


def test_session_key_takes_lowercase_hex_only() -> None:
    assert session_key(PREFIX, "00ff") == "/j/00ff"
    for bad in ("", "00FF", "00ff\n", "../x", "a" * 129, 12, None):
        with pytest.raises(ValueError, match="lowercase hex"):
            session_key(PREFIX, bad)  # type: ignore[arg-type]


def test_key_layout_markers_heartbeats_and_prefix_range() -> None:
    assert session_of(PREFIX, b64("/j/aa01")) == ("aa01", False)
    assert session_of(PREFIX, b64("/j/aa01.conflict")) == ("aa01", True)
    assert heartbeat_key(PREFIX, "gw-a") == "/j/.heartbeat/gw-a"
    assert prefix_end("/j/") == b"/j0"
    assert heartbeat_seq({"value": heartbeat_value("gw-a", 41)}) == 41
    for bad in ("", b64("[]"), b64('{"seq": "41"}'), b64("nope")):
        assert heartbeat_seq({"value": bad}) is None


def test_current_is_the_first_key_a_failed_transaction_read() -> None:
    kv = {"key": b64("/j/aa01"), "mod_revision": "9"}
    r = {"responses": [{"response_range": {}}, {"response_range": {"kvs": [kv]}}]}
    assert current(r) == kv
    assert current({"responses": [{"response_range": {"kvs": []}}]}) is None
    assert current({}) is None


# ------------------------------------------------------------------ lease keeper
class FakeCluster:
    """What the keeper and the watch use of jumping_etcd.client.Cluster."""

    def __init__(self, members: int = 3) -> None:
        self.endpoints = [("https", f"m{i}", 2379) for i in range(members)]
        self.timeout = 2.0
        self.preferred = 0
        self.security = SimpleNamespace(auth=False)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.on: dict[int, Any] = {}  # member -> call_on(path, payload) handler
        self.next_lease = 77

    def call(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> Any:
        self.calls.append((path, payload))
        if path == "lease/grant":
            return {"ID": str(self.next_lease), "TTL": "3", "header": {"revision": "5"}}
        return {}

    def call_on(self, i: int, path: str, payload: dict[str, Any], timeout: float = 0) -> Any:
        handler = self.on.get(i)
        if handler is None:
            raise Unreachable(f"m{i}: timed out")
        return handler(path, payload)


def answering(term: int = 2, put_term: int | None = None, ttl: int = 3) -> Any:
    """A member's answers: the keep-alive (granted ``ttl``), then the heartbeat put."""
    puts: list[dict[str, Any]] = []

    def handler(path: str, payload: dict[str, Any]) -> Any:
        if path == "lease/keepalive":
            return {"result": {"TTL": str(ttl), "header": {"raft_term": str(term),
                                                           "member_id": "1"}}}  # fmt: skip
        puts.append(payload)
        return {"header": {"raft_term": str(put_term or term), "member_id": "1"}}

    handler.puts = puts  # type: ignore[attr-defined]
    return handler


def keeper(cluster: FakeCluster | None = None) -> tuple[LeaseKeeper, Clock, dict[str, Any]]:
    clock = Clock()
    seen: dict[str, Any] = {"lost": 0, "stalled": 0, "unreachable": [], "reactor": Reactor()}

    def lost() -> None:
        seen["lost"] += 1

    def stalled() -> None:
        seen["stalled"] += 1

    k = LeaseKeeper(
        cluster or FakeCluster(), "gw-a", 3, heartbeat_key(PREFIX, "gw-a"),
        LeaseDeadline(3, 0.6, 0.75, clock), threading.Event(), seen["reactor"].callFromThread,
        lost, stalled, seen["unreachable"].append, clock,
    )  # fmt: skip
    k.started(42, clock.now)
    return k, clock, seen


def test_keep_alives_failing_past_the_ttl_lose_the_lease_then_a_new_one_is_regained() -> None:
    k, clock, seen = keeper()
    cluster = k.cluster
    assert k.round() == 0.1  # nobody answered: retried at once (briefly paced)
    assert k.keepalive_failures == 3 and seen["unreachable"] == [0, 1, 2]
    clock.now = 102.39  # just before the deadline (grant + TTL - guard)
    k.check()
    assert k.healthy and seen["lost"] == 0
    clock.now = 100 + 3 - 0.6
    k.check()
    assert not k.healthy and k.lost == 1 and seen["lost"] == 1 and k.need_lease
    k.check()  # lost once, not at every check
    assert k.lost == 1 and seen["lost"] == 1

    t_regrant = clock.now
    assert k.round() == 0.0  # a new lease, at once
    assert k.lease_id == 77 and not k.need_lease
    assert ("kv/lease/revoke", {"ID": "42"}) in cluster.calls  # the old one is given back
    assert not k.healthy  # healthy again only on the reactor
    seen["reactor"].run()
    assert k.healthy
    clock.now = t_regrant + 2.39  # before the new lease's own deadline
    k.check()
    assert k.healthy and k.lost == 1


def test_a_failed_regrant_waits_a_keep_alive_period() -> None:
    k, clock, _ = keeper()
    clock.now += 5
    k.check()

    def down(*a: Any, **kw: Any) -> Any:
        raise OwnershipUnavailable("down")

    k.cluster.call = down  # type: ignore[method-assign]
    assert k.round() == pytest.approx(1.0) and k.need_lease and k.lease_id == 42


def test_a_closed_keeper_does_not_come_back() -> None:
    k, clock, seen = keeper()
    clock.now += 5
    k.check()
    k.round()
    k.closed = True
    seen["reactor"].run()
    assert not k.healthy


def test_a_renewal_counts_only_once_the_watch_delivers_its_heartbeat() -> None:
    cluster = FakeCluster()
    cluster.on[0] = member = answering()
    k, clock, seen = keeper(cluster)
    clock.now = 101.0
    wait = k.round()
    assert wait == pytest.approx(1.0) and k.keepalive_failures == 0
    (put,) = member.puts
    assert put["key"] == b64("/j/.heartbeat/gw-a") and put["lease"] == "42"
    assert heartbeat_seq(put) == 1
    clock.now = 100 + 3 - 0.6  # the grant's deadline: renewed, but not seen yet
    k.check()
    assert not k.healthy and seen["lost"] == 1

    cluster.on[0] = member = answering()
    k, clock, seen = keeper(cluster)
    clock.now = 101.0
    k.round()
    assert k.deadline.seen(heartbeat_seq(member.puts[0]))  # what the watch reports
    clock.now = 100 + 3 - 0.6
    k.check()
    assert k.healthy
    clock.now = 101 + 3 - 0.6  # this renewal's own deadline
    k.check()
    assert not k.healthy


def test_a_keep_alive_whose_heartbeat_is_in_another_term_does_not_count() -> None:
    cluster = FakeCluster()
    cluster.on[0] = member = answering(term=2, put_term=3)
    k, clock, seen = keeper(cluster)
    clock.now = 101.0
    assert k.round() == pytest.approx(1.0)  # an answer: next round, not the next member
    assert k.keepalive_failures == 1 and seen["unreachable"] == []
    assert not k.deadline.seen(heartbeat_seq(member.puts[0]))  # nothing to count
    clock.now = 100 + 3 - 0.6
    k.check()
    assert not k.healthy


def test_a_member_that_does_not_answer_costs_the_next_member() -> None:
    cluster = FakeCluster()
    cluster.on[1] = answering()
    k, clock, seen = keeper(cluster)
    k.round()
    assert seen["unreachable"] == [0] and cluster.preferred == 1 and k.keepalive_failures == 1


def test_a_revoked_lease_is_lost_at_the_next_check() -> None:
    cluster = FakeCluster()
    cluster.on[0] = answering(ttl=0)
    k, clock, seen = keeper(cluster)
    k.round()
    assert k.lease_gone
    k.check()
    assert not k.healthy and seen["lost"] == 1


def test_a_stalled_watch_is_reported() -> None:
    cluster = FakeCluster()
    cluster.on[0] = answering()
    k, clock, seen = keeper(cluster)
    k.round()
    clock.now += 0.8  # the heartbeat is older than stall_after and still unseen
    k.check()
    assert k.healthy and seen["stalled"] == 1


# ------------------------------------------------------------------ facade glue
class GlueReactor(ReactorClock):
    def callFromThread(self, f: Any, *a: Any) -> None:
        f(*a)


def test_the_facade_reports_every_watched_session_lost_with_the_lease() -> None:
    clock = Clock()
    b = EtcdOwnership(node_id="gw-a", ttl=3, reactor=GlueReactor(), clock=clock)
    b.keeper.started(42, clock.now)
    assert b.healthy and b._lease_id == 42 and b.interval == 1.0
    got: list[Any] = []
    b._interest[A] = _Own()
    b._interest[A].token = 10
    b.watch(A, lambda sid, token, reason: got.append((sid, token, reason)))
    clock.now += 3
    b.keeper.check()
    assert got == [(A, None, "lease_lost")]
    assert not b.healthy and b.lost == 1 and b._epoch == 1 and not b._interest
    d = b.claim(A, {"state_version": 1}, None)
    failure: list[Any] = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(OwnershipUnavailable)
    assert "fail closed" in str(failure[0].value)
