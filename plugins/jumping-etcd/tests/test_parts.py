"""
The parts of the etcd backend alone, without etcd (no cluster fixture: nothing here starts
one): the record envelope (jumping_etcd.envelope), the lease keeper (jumping_etcd.lease)
on a fake cluster and an injected clock, the watch (jumping_etcd.watch) on scripted
streams, and the facade's glue between them.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from jumping_etcd.backend import EtcdOwnership
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
from jumping_etcd.watch import SessionWatch, _Own
from twisted.internet import defer
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
        if handler is None and path == "lease/grant":
            return self.call(path, payload)  # grants: every member, unless one is set up
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
    # the old one lapses on its own: its sessions' records stay until then, for takeovers
    assert not [c for c in cluster.calls if c[0] == "kv/lease/revoke"]
    assert not k.healthy  # healthy again only on the reactor
    seen["reactor"].run()
    assert k.healthy
    clock.now = t_regrant + 2.39  # before the new lease's own deadline
    k.check()
    assert k.healthy and k.lost == 1


def test_a_regranted_lease_runs_from_the_send_time_of_the_grant_that_answered() -> None:
    """After a long outage the first members tried may not answer (each costs its timeout)
    before one grants: the new lease's deadline is that request's send time + TTL - guard,
    not the round's start, or it would be lost again at once."""
    k, clock, seen = keeper()
    clock.now += 5
    k.check()
    assert not k.healthy and k.need_lease and seen["lost"] == 1
    grant = {"ID": "78", "TTL": "3", "header": {"revision": "9"}}

    def slow_down(path: str, payload: dict[str, Any]) -> Any:
        clock.now += 2.5  # a timeout's worth on a member that does not answer
        raise Unreachable("m0: timed out")

    k.cluster.on = {0: slow_down, 1: lambda path, payload: grant}
    round_start = clock.now
    assert k.round() == 0.0 and k.lease_id == 78 and k.cluster.preferred == 1
    seen["reactor"].run()
    assert k.healthy
    clock.now = round_start + 2.5 + 2.39  # the answering grant's deadline, just before it
    k.check()
    assert k.healthy and k.lost == 1, "a fresh lease was lost by the time a dead member cost"
    clock.now = round_start + 2.5 + 2.41
    k.check()
    assert not k.healthy and k.lost == 2


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


# ------------------------------------------------------------------ watch
def session_watch(
    cluster: Any = None, read: Any = None
) -> tuple[SessionWatch, dict[str, _Own], Reactor, list[Any]]:
    interest: dict[str, _Own] = {}
    reactor = Reactor()
    got: list[Any] = []
    w = SessionWatch(
        cluster or FakeCluster(), PREFIX, heartbeat_key(PREFIX, "gw-a"), 1.0,
        threading.Event(), reactor, interest, lambda seq: got.append(("hb", seq)),
        read or (lambda sid: defer.succeed(None)), lambda sid: got.append(("unwatched", sid)),
    )  # fmt: skip
    return w, interest, reactor, got


def put(sid: str, rev: int, nonce: str = "theirs", node: str = "gw-b") -> dict[str, Any]:
    value = encode(node, "claim", nonce, {"state_version": 1})
    return {"kv": {"key": b64(PREFIX + sid), "value": value, "mod_revision": str(rev)}}


def delete(sid: str, rev: int) -> dict[str, Any]:
    return {"type": "DELETE", "kv": {"key": b64(PREFIX + sid), "mod_revision": str(rev)}}


def test_the_watch_dispatches_each_event_to_its_sessions_callbacks() -> None:
    w, interest, reactor, got = session_watch()
    st = interest[A] = _Own()
    st.token = 10
    st.nonces.append("mine")
    w.add(A, lambda sid, token, reason: got.append((sid, token, reason)))
    wb = w.add(B, lambda sid, token: got.append((sid, token)))
    hb = {"kv": {"key": b64("/j/.heartbeat/gw-a"), "value": heartbeat_value("gw-a", 7),
                 "mod_revision": "16"}}  # fmt: skip
    w.on_events([put(A, 11), put(B, 12), put(C, 12)])
    assert got == [(A, 11, None), (B, 12)] and st.changed == (11, 11, None)
    got.clear()
    w.on_events([delete(A, 13), put(A + ".conflict", 14), delete(A + ".conflict", 15), hb])
    assert got == [(A, None, None), (A, None, "conflict"), ("hb", 7)]
    assert st.changed == (14, None, "conflict")
    got.clear()
    w.on_events([put(A, 17, nonce="mine", node="gw-a")])  # our own write: delivered...
    assert got == [(A, 17, None)] and st.changed == (14, None, "conflict")  # ...not foreign
    got.clear()
    wb.cancel()
    assert got == [("unwatched", B)]
    w.on_events([put(B, 18)])
    assert got == [("unwatched", B)]
    # a change seen between the claim and a new registration reaches the new callback
    w.add(A, lambda sid, token, reason: got.append(("late", sid, token, reason)))
    reactor.run()
    assert got[-1] == ("late", A, None, "conflict")
    w.deliver_all("lease_lost")
    assert got[-2:] == [(A, None, "lease_lost"), ("late", A, None, "lease_lost")]


def test_a_failing_callback_does_not_stop_the_others() -> None:
    w, interest, _, got = session_watch()
    w.add(A, lambda sid, token: 1 / 0)
    w.add(A, lambda sid, token: got.append((sid, token)))
    w.on_events([put(A, 5)])
    assert got == [(A, 5)]


class Stream:
    def __init__(self, lines: list[Any], status: int = 200, then: Any = None) -> None:
        self.lines, self.status_code, self.then, self.text = lines, status, then, "nope"

    def iter_lines(self) -> Any:
        for line in self.lines:
            yield json.dumps(line).encode() if isinstance(line, dict) else line
        if self.then is not None:
            self.then()

    def close(self) -> None:
        pass


class StreamCluster(FakeCluster):
    def __init__(self, streams: list[Any]) -> None:
        super().__init__()
        self.streams = streams
        self.posts: list[tuple[int, dict[str, Any]]] = []

    def headers(self, i: int) -> dict[str, str]:
        return {}

    def client(self, i: int) -> Any:
        def post(url: str, json: dict[str, Any], **kw: Any) -> Any:
            self.posts.append((i, json["create_request"]))
            s = self.streams.pop(0)
            if isinstance(s, Exception):
                raise s
            return s

        return SimpleNamespace(get_url=lambda path: path, session=SimpleNamespace(post=post))


def test_the_stream_resumes_after_a_compaction_a_cancel_and_a_broken_connection() -> None:
    done = threading.Event()
    cluster = StreamCluster(
        [
            Stream(
                [{"result": {"events": [put(A, 20)]}}, b"", {"result": {"compact_revision": "30"}}]
            ),  # fmt: skip
            Stream([{"result": {"canceled": True, "cancel_reason": "no leader"}}]),
            ConnectionError("refused"),
            Stream([b"garbage"]),
            Stream([{"result": {"events": [put(A, 33)]}}], then=done.set),
        ]
    )
    w, interest, reactor, _ = session_watch(cluster)
    w._stop = done  # the last stream ends the loop
    w.loop(15)
    assert [i for i, _ in cluster.posts] == [0, 1, 2, 0, 1]  # each restart: the next member
    starts = [req["start_revision"] for _, req in cluster.posts]
    assert starts == ["15", "30", "30", "30", "30"]  # nothing between is skipped
    assert all(req["key"] == b64(PREFIX) and req["range_end"] == b64(b"/j0")
               for _, req in cluster.posts)  # fmt: skip
    assert [f.__name__ for f, _ in reactor.calls] == ["on_events", "resync", "on_events"]
    assert w.restarts == 5 and w.member == 2


def test_resync_reports_the_sessions_that_changed_while_the_history_was_compacted() -> None:
    now = {A: ({}, 10), B: ({}, 12), C: None}
    w, interest, _, got = session_watch(read=lambda sid: defer.succeed(now[sid]))
    for sid in (A, B, C):
        interest[sid] = _Own()
        interest[sid].token = 10
        w.add(sid, lambda sid, token: got.append((sid, token)))
    w.resync()
    assert got == [(B, 12), (C, None)]  # A is still ours


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
