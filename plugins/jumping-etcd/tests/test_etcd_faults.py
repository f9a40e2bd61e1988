"""
Cluster faults on the real 3-member cluster: one member down (claims, renewals and watches
go on), quorum lost (the backend fails closed within the lease TTL, measured), recovery;
the member under a node's watch frozen while the others carry on (the node still learns of
a takeover within its TTL). Every test leaves all three members running and healthy.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest_twisted
from twisted.internet import task

from jumping.errors import OwnershipConflict, OwnershipUnavailable
from jumping.testing.conformance import wait_until


def sid() -> str:
    return secrets.token_hex(16)


def record(owner: str, version: int = 1) -> dict[str, Any]:
    return {"client_public_key": "ab" * 32, "state_version": version, "owner": owner}


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def retrying(make: Any, within: float) -> tuple[Any, float]:
    """Call ``make()`` until its Deferred succeeds; return (result, seconds unavailable)."""
    t0 = time.monotonic()
    while True:
        try:
            return await make(), time.monotonic() - t0
        except OwnershipUnavailable:
            if time.monotonic() - t0 > within:
                raise
            await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_one_member_down_claims_renewals_and_watches_continue(
    backends: Any, etcd_cluster: Any
) -> None:
    a, b = await backends("m-a", timeout=1.0), await backends("m-b", timeout=1.0)
    held = []
    for _ in range(10):
        s = sid()
        held.append((s, await a.claim(s, record("m-a"), None)))
    watched, seen = held[0][0], []
    w = a.watch(watched, lambda *args: seen.append(args))
    try:
        for member in (1, 2, 3):  # each one in turn, the leader among them
            etcd_cluster.stop_member(member)
            try:
                worst = 0.0
                for i, (s, t) in enumerate(held):
                    t2, gap = await retrying(lambda s=s, t=t: a.renew(s, t, record("m-a", 2)), 5)
                    held[i] = (s, t2)
                    worst = max(worst, gap)
                for _ in range(10):
                    s = sid()
                    t, gap = await retrying(lambda s=s: a.claim(s, record("m-a"), None), 5)
                    worst = max(worst, gap)
                    await a.release(s, t)
                # a hand-over by another gateway reaches our watch (on a surviving member)
                s, t = held[0]
                t2 = await b.claim(s, record("m-b", 3), t)
                await wait_until(lambda t2=t2: any(x[1] == t2 for x in seen), "the watch", 5)
                held[0] = (s, await a.claim(s, record("m-a", 4), t2))
                assert a.healthy and a.lost == 0, "one member down must not lose the lease"
                print(f"\nmember m{member} down: longest unavailability {worst * 1000:.0f} ms")
            finally:
                etcd_cluster.start_member(member)
                etcd_cluster.healthy()
    finally:
        w.cancel()


@pytest_twisted.ensureDeferred
async def test_quorum_lost_fails_closed_within_the_ttl_then_recovers(
    backends: Any, etcd_cluster: Any
) -> None:
    ttl = 3
    a = await backends("q-a", ttl=ttl, timeout=0.5)
    b = await backends("q-b", ttl=ttl, timeout=0.5)
    sessions = {}
    for _ in range(20):
        s = sid()
        sessions[s] = await a.claim(s, record("q-a"), None)
    lost: dict[str, tuple[Any, ...]] = {}

    def changed(s: str, token: Any, reason: Any = None) -> None:
        if token is None:  # (a late report of our own claim carries our token: ignored)
            lost.setdefault(s, (time.monotonic(), token, reason))

    watches = [a.watch(s, changed) for s in sessions]
    # let a keep-alive land so the measurement starts from a fresh lease
    await sleep(a.interval + 0.1)
    etcd_cluster.kill_member(2)  # two crashes: the survivor has no quorum
    stopped = time.monotonic()  # quorum is lost from here on
    etcd_cluster.kill_member(3)
    try:
        await wait_until(lambda: len(lost) == len(sessions), "every session reported lost", ttl + 2)
        took = max(v[0] for v in lost.values()) - stopped
        assert all(v[1:] == (None, "lease_lost") for v in lost.values()), lost
        assert not a.healthy and a.lost == 1
        assert took <= ttl, f"failed closed after {took:.2f} s > TTL {ttl} s"
        print(f"\nquorum lost: all {len(sessions)} sessions reported lost after {took:.2f} s "
              f"(TTL {ttl} s)")  # fmt: skip
        try:
            await a.claim(sid(), record("q-a"), None)
            raise AssertionError("claimed without quorum")
        except OwnershipUnavailable as e:
            assert "fail closed" in str(e)
        s0, t_old = next(iter(sessions.items()))
        try:
            await a.renew(s0, t_old, record("q-a", 2))
            raise AssertionError("renewed without quorum")
        except OwnershipUnavailable:
            pass
    finally:
        etcd_cluster.start_member(2)
        etcd_cluster.start_member(3)
        etcd_cluster.healthy()
        for w in watches:
            w.cancel()
    # quorum back: a new lease, claims again
    await wait_until(lambda: a.healthy and b.healthy, "new leases", 10)
    s = sid()
    assert await a.claim(s, record("q-a"), None) > 0
    # the sessions reported lost keep their records until the old lease lapses (it is not
    # revoked), so their clients can resume them elsewhere: another node takes one over by
    # CAS on the token it read, as any hand-over
    s0 = next(iter(sessions))
    got = await b.get(s0)
    assert got is not None, "the lost sessions' records went with the quorum loss"
    assert got[1] == sessions[s0] and got[0]["owner"] == "q-a"
    taken = await b.claim(s0, record("q-b", 2), got[1])
    assert taken > got[1]
    # the others go once the old lease lapses (nobody keeps it alive), within about a TTL
    rest = [x for x in sessions if x != s0]
    deadline = time.monotonic() + ttl + 6
    left = rest
    while left and time.monotonic() < deadline:
        left = [x for x in left if await b.get(x) is not None]
        await sleep(0.2)
    assert not left, f"{len(left)} records of the lapsed lease still there after {ttl + 6} s"
    mine = await b.get(s0)
    assert mine is not None and mine[1] == taken, "the taken-over session went with the lease"


@pytest_twisted.ensureDeferred
async def test_a_frozen_watch_member_cannot_hide_a_takeover(
    backends: Any, etcd_cluster: Any
) -> None:
    """The member serving a node's watch stops answering (SIGSTOP: its connections stay
    open, the stream just goes quiet) while the other two keep the quorum. Its keep-alives
    fail over to them; another node takes the session over through them. The node must
    learn it (the new token, or a fail-closed ``None``) within its lease TTL."""
    ttl = 3
    a = await backends("fz-a", ttl=ttl, timeout=0.5)
    s = sid()
    t = await a.claim(s, record("fz-a"), None)
    seen: list[tuple[float, Any, Any]] = []
    w = a.watch(s, lambda _s, token, reason=None: seen.append((time.monotonic(), token, reason)))
    await sleep(a.interval + 0.1)
    member = getattr(a, "watch_member", 0) + 1  # the old backend watches the first member
    others = [u for k, u in enumerate(etcd_cluster.endpoint_list) if k != member - 1]
    b = await backends("fz-b", timeout=0.5, endpoints=",".join(others))
    etcd_cluster.freeze_member(member)
    try:
        t2, _ = await retrying(lambda: b.claim(s, record("fz-b", 2), t), 5)
        taken = time.monotonic()
        await wait_until(lambda: any(x[1] != t for x in seen), "the takeover reported", ttl + 2)
        at, token, reason = next(x for x in seen if x[1] != t)
        assert token in (t2, None), seen
        assert at - taken <= ttl, f"learnt after {at - taken:.2f} s > TTL {ttl} s"
        print(f"\nwatch member m{member} frozen: takeover learnt after {at - taken:.2f} s "
              f"({'token ' + str(token) if token else reason}; watch restarts "
              f"{a.watch_restarts}, lease lost {a.lost} times)")  # fmt: skip
        # and it never acts on the session again
        try:
            await a.renew(s, t, record("fz-a", 3))
            raise AssertionError("renewed a session taken over")
        except (OwnershipUnavailable, OwnershipConflict):
            pass
    finally:
        w.cancel()
        etcd_cluster.thaw_member(member)
        etcd_cluster.healthy()
