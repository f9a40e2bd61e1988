"""
The etcd backend against the real 3-member cluster: concurrent claims, split brain, stale
tokens, forged records, bad configuration, and the gateway glue that fails closed.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from jumping import plugin
from jumping.core.gateway import GatewayCore
from jumping.core.outputs import Claim
from jumping.errors import OwnershipConflict, OwnershipUnavailable, PluginError
from jumping.interfaces import IOwnershipBackend
from jumping.service.node import NodeService
from jumping.testing.conformance import wait_until


def sid() -> str:
    return secrets.token_hex(16)


def record(owner: str, version: int = 1, key: str = "ab" * 32) -> dict[str, Any]:
    return {"client_public_key": key, "state_version": version, "owner": owner}


async def outcome(d: Any) -> tuple[str, Any]:
    try:
        return "ok", await d
    except OwnershipConflict as e:
        return "conflict", e


# ------------------------------------------------------------------ concurrency
@pytest_twisted.ensureDeferred
async def test_concurrent_claims_from_two_gateways_exactly_one_winner_1000_rounds(
    backends: Any, etcd_cluster: Any
) -> None:
    # the two "gateways" talk to different members, so their transactions really race
    a = await backends("gw-a")
    b = await backends("gw-b", endpoints=list(reversed(etcd_cluster.endpoint_list)))
    wins = {"gw-a": 0, "gw-b": 0}
    split = 0
    for i in range(1000):
        s = sid()
        # even rounds: same state_version on both sides (split brain: both must end);
        # odd rounds: different versions (a plain race: the loser alone fails)
        va, vb = (1, 1) if i % 2 == 0 else (1, 2)
        ra, rb = await defer.gatherResults([
            defer.ensureDeferred(outcome(a.claim(s, record("gw-a", va), None))),
            defer.ensureDeferred(outcome(b.claim(s, record("gw-b", vb), None))),
        ])  # fmt: skip
        kinds = sorted([ra[0], rb[0]])
        assert kinds == ["conflict", "ok"], (i, ra, rb)
        winner, (_, token) = ("gw-a", ra) if ra[0] == "ok" else ("gw-b", rb)
        loser = rb if ra[0] == "ok" else ra
        wins[winner] += 1
        if "split brain" in str(loser[1]):
            split += 1
            assert va == vb
        w = a if winner == "gw-a" else b
        await w.release(s, token)
    assert wins["gw-a"] + wins["gw-b"] == 1000
    assert split == 500, "every same-version race is reported as a split brain"
    print(f"\n1000 rounds: wins {wins}, split brains detected {split}")


# ------------------------------------------------------------------ split brain
@pytest_twisted.ensureDeferred
async def test_split_brain_both_sides_are_told_and_the_id_is_burned(backends: Any) -> None:
    a, b, c = await backends("sb-a"), await backends("sb-b"), await backends("sb-c")
    s = sid()
    t = await a.claim(s, record("sb-a", 3), None)
    seen: list[tuple[Any, ...]] = []
    w = a.watch(s, lambda *args: seen.append(args))
    kind, err = await outcome(b.claim(s, record("sb-b", 3), None))
    assert kind == "conflict" and "split brain" in str(err), err
    await wait_until(lambda: (s, None, "conflict") in seen, "the winner's watch: conflict", 3)
    w.cancel()
    assert await a.get(s) == (record("sb-a", 3), t), "the winner's record is left to it"
    await a.release(s, t)
    kind, err = await outcome(c.claim(s, record("sb-c", 1), None))
    assert kind == "conflict" and "burned" in str(err), err


# ------------------------------------------------------------------ fencing
@pytest_twisted.ensureDeferred
async def test_stale_fencing_token_is_refused_everywhere(backends: Any) -> None:
    a, b = await backends("st-a"), await backends("st-b")
    s = sid()
    t1 = await a.claim(s, record("st-a"), None)
    t2 = await b.claim(s, record("st-b"), t1)
    assert t2 > t1
    assert (await outcome(a.renew(s, t1, record("st-a", 2))))[0] == "conflict"
    assert (await outcome(a.claim(s, record("st-a", 2), t1)))[0] == "conflict"
    assert await a.release(s, t1) is None  # ignored
    assert await a.get(s) == (record("st-b"), t2), "a stale token changed the record"


@pytest_twisted.ensureDeferred
async def test_forged_record_is_not_accepted_as_ours(backends: Any, etcd_cluster: Any) -> None:
    a = await backends("fg-a")
    s = sid()
    t1 = await a.claim(s, record("fg-a"), None)
    seen: list[tuple[Any, ...]] = []
    w = a.watch(s, lambda *args: seen.append(args))
    key = a.prefix + s
    stored = json.loads(etcd_cluster.etcdctl("get", key, "--print-value-only"))
    # someone copies our record, changes the client key, even attaches it to our lease
    stored["record"]["client_public_key"] = "cd" * 32
    lease = f"{a._lease_id:x}"
    etcd_cluster.etcdctl("put", key, json.dumps(stored), f"--lease={lease}")
    await wait_until(lambda: any(x[1] not in (None, t1) for x in seen), "the watch", 3)
    forged_token = seen[-1][1]
    assert forged_token > t1
    assert (await outcome(a.renew(s, t1, record("fg-a", 2))))[0] == "conflict"
    got = await a.get(s)
    assert got is not None and got[1] == forged_token and got[0]["client_public_key"] == "cd" * 32
    # a value that is not our envelope at all
    etcd_cluster.etcdctl("put", key, "not json")
    await wait_until(lambda: len(seen) >= 2, "the watch (garbage)", 3)
    got = await a.get(s)
    assert got is not None and got[0] == {"malformed": True}
    assert (await outcome(a.claim(s, record("fg-a"), None)))[0] == "conflict"
    w.cancel()
    etcd_cluster.etcdctl("del", key)


# ------------------------------------------------------------------ bad configuration
@pytest_twisted.ensureDeferred
async def test_unreachable_at_start_is_one_clear_line_and_no_backend() -> None:
    b = plugin.load(IOwnershipBackend, "etcd", node_id="gw", endpoints="http://127.0.0.1:23799",
                    timeout=0.5)  # fmt: skip
    t = time.monotonic()
    try:
        with pytest.raises(OwnershipUnavailable) as info:
            await b.start()
        msg = str(info.value)
        assert "\n" not in msg and "cannot start" in msg and "connection refused" in msg, msg
        assert "http://127.0.0.1:23799" in msg
        assert time.monotonic() - t < 3
        with pytest.raises(OwnershipUnavailable, match="no lease"):  # no lease: no claim
            await b.claim(sid(), record("gw"), None)
    finally:
        await b.close()


@pytest_twisted.ensureDeferred
async def test_constructing_grants_no_lease(etcd_cluster: Any) -> None:
    """The lease is granted by start() (after twistd's fork), not by the constructor."""

    def leases() -> set[int]:  # "found N leases" then one hex id a line
        return {int(x, 16) for x in etcd_cluster.etcdctl("lease", "list").split()[3:]}

    before = leases()
    b = plugin.load(IOwnershipBackend, "etcd", node_id="gw-lc", endpoints=etcd_cluster.endpoints,
                    **etcd_cluster.security)  # fmt: skip
    try:
        assert leases() - before == set(), "the constructor granted a lease"
        await b.start()
        assert b._lease_id in leases() - before
    finally:
        await b.close()


@pytest.mark.parametrize(
    "endpoints",
    ["127.0.0.1:2379", "http://127.0.0.1:notaport", "", "ftp://127.0.0.1:2379", ["http://h"], 5],
)
def test_wrong_endpoints_are_one_line_errors(endpoints: Any) -> None:
    with pytest.raises(PluginError) as info:
        plugin.load(IOwnershipBackend, "etcd", node_id="gw", endpoints=endpoints)
    msg = str(info.value)
    assert "\n" not in msg and "etcd" in msg and "endpoint" in msg, msg


@pytest.mark.parametrize(
    "options",
    [{"ttl": 1}, {"ttl": "5"}, {"timeout": 0}, {"threads": 0}, {"prefix": "x"}, {"bogus": 1}],
)
def test_bad_options_are_one_line_errors(options: dict[str, Any], etcd_cluster: Any) -> None:
    with pytest.raises(PluginError) as info:
        plugin.load(IOwnershipBackend, "etcd", node_id="gw", endpoints=etcd_cluster.endpoints,
                    **{**etcd_cluster.security, **options})  # fmt: skip
    assert "\n" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_endpoint_that_is_not_etcd() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"404 page not found")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    b = plugin.load(IOwnershipBackend, "etcd", node_id="gw",
                    endpoints=f"http://127.0.0.1:{server.server_port}")  # fmt: skip
    try:
        with pytest.raises(OwnershipUnavailable) as info:
            await b.start()
        msg = str(info.value)
        assert "\n" not in msg and "cannot start" in msg and "Not Found" in msg, msg
    finally:
        await b.close()
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ gateway glue
class _Session:
    def __init__(self) -> None:
        self.owner_token: int | None = None


class FakeGateway(GatewayCore):
    """Only what NodeService's ownership glue (jumping.service.ownership) touches: sessions
    and the two answers."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, Any] = {}
        self.pending: list[Any] = []
        self.calls: list[tuple[str, str, Any]] = []

    def claimed(self, now: float, session_id: str, token: Any, error: Any) -> list[Any]:
        s = self.sessions[bytes.fromhex(session_id)]
        if token is not None:
            s.owner_token = token
        self.calls.append(("claimed", session_id, token if token is not None else error))
        return []

    def ownership_lost(self, now: float, session_id: str) -> list[Any]:
        self.sessions[bytes.fromhex(session_id)].owner_token = None
        self.calls.append(("lost", session_id, None))
        return []


def glue(backend: Any) -> tuple[NodeService, FakeGateway]:
    from twisted.internet import reactor

    svc = NodeService(config=None, reactor=reactor)
    core = FakeGateway()
    svc.core, svc.ownership = core, backend
    svc.owners.backend = backend
    return svc, core


@pytest_twisted.ensureDeferred
async def test_gateway_terminates_sessions_another_node_takes(backends: Any) -> None:
    a, b = await backends("gl-a"), await backends("gl-b")
    svc, core = glue(a)
    s = sid()
    core.sessions[bytes.fromhex(s)] = _Session()
    svc._run([Claim(s, record("gl-a"), None)])
    await wait_until(lambda: core.calls, "the claim", 3)
    ((kind, _, t1),) = core.calls
    assert kind == "claimed" and isinstance(t1, int)
    await b.claim(s, record("gl-b", 2), t1)  # hand-over to another gateway
    await wait_until(lambda: ("lost", s, None) in core.calls, "OWNERSHIP_LOST", 3)
    assert s not in svc.owners.watches


@pytest_twisted.ensureDeferred
async def test_gateway_split_brain_ends_with_conflict_on_the_winner(backends: Any) -> None:
    a, b = await backends("gs-a"), await backends("gs-b")
    svc, core = glue(a)
    s = sid()
    core.sessions[bytes.fromhex(s)] = _Session()
    svc._run([Claim(s, record("gs-a", 1), None)])
    await wait_until(lambda: core.calls, "the claim", 3)
    assert (await outcome(b.claim(s, record("gs-b", 1), None)))[0] == "conflict"
    await wait_until(lambda: ("claimed", s, "split_brain") in core.calls, "CONFLICT", 3)
