"""The service's ownership glue (jumping/service/ownership.py): a node's own renewal is
not mistaken for a fence even when the watch reports it before the renewal answers (as etcd
does: the watch stream and the request are separate connections); a write after it is."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from jumping.core.fsm import State
from jumping.core.outputs import Renew
from jumping.errors import OwnershipConflict
from jumping.service.ownership import OwnershipDriver
from jumping.testing.sim import ClusterNet


class SlowBackend:
    """Renewals answer when the test says; the watch callback is the test's to call."""

    def __init__(self) -> None:
        self.renewals: list[defer.Deferred[int]] = []
        self.callbacks: dict[str, Any] = {}

    def renew(self, sid: str, token: int, record: Any) -> defer.Deferred[int]:
        d: defer.Deferred[int] = defer.Deferred()
        self.renewals.append(d)
        return d

    def watch(self, sid: str, callback: Any) -> Any:
        self.callbacks[sid] = callback
        return type("W", (), {"cancel": lambda self: None})()


@pytest.fixture
def owned() -> tuple[ClusterNet, str, Any, OwnershipDriver, SlowBackend]:
    net = ClusterNet(seed=31, gateways=2)
    net.start()
    net.run_for(2.0)
    s = net.client.session
    assert s is not None and s.fsm.state is State.ATTACHED
    name = next(n for n, g in net.gateways.items() if s.session_id in g.sessions)
    gw = net.gateways[name]
    backend = SlowBackend()
    driver = OwnershipDriver(
        backend, lambda: gw, lambda outs: net.apply(name, outs), lambda: net.now
    )
    driver.watch(s.sid_hex)
    return net, name, gw.sessions[s.session_id], driver, backend


def _renew(driver: OwnershipDriver, s: Any) -> None:
    driver.execute(Renew(s.sid_hex, {"state_version": s.fsm.state_version}, s.owner_token))


def test_own_renewal_seen_by_the_watch_first_is_not_a_fence(owned: Any) -> None:
    net, name, s, driver, backend = owned
    t1 = s.owner_token
    _renew(driver, s)
    backend.callbacks[s.sid_hex](s.sid_hex, t1 + 5)  # our write, reported early
    assert s.owned, "fenced by its own renewal"
    backend.renewals[0].callback(t1 + 5)
    assert s.owned and s.owner_token == t1 + 5
    backend.callbacks[s.sid_hex](s.sid_hex, t1 + 5)  # and reported again: still ours
    assert s.owned


def test_a_write_after_our_renewal_is_a_fence(owned: Any) -> None:
    net, name, s, driver, backend = owned
    t1 = s.owner_token
    _renew(driver, s)
    backend.callbacks[s.sid_hex](s.sid_hex, t1 + 5)
    backend.callbacks[s.sid_hex](s.sid_hex, t1 + 9)  # someone else, after us
    backend.renewals[0].callback(t1 + 5)
    assert not s.owned and s.fsm.state is State.TERMINATED
    assert net.events(name, "SESSION_TERMINATED")[-1].reason_code == "OWNERSHIP_LOST"


def test_a_deletion_during_a_renewal_fences_at_once(owned: Any) -> None:
    net, name, s, driver, backend = owned
    _renew(driver, s)
    backend.callbacks[s.sid_hex](s.sid_hex, None)
    assert not s.owned and s.fsm.state is State.TERMINATED


def test_a_refused_renewal_fences(owned: Any) -> None:
    net, name, s, driver, backend = owned
    _renew(driver, s)
    backend.renewals[0].errback(OwnershipConflict("stale"))
    assert not s.owned and s.fsm.state is State.TERMINATED


def test_one_renewal_at_a_time(owned: Any) -> None:
    net, name, s, driver, backend = owned
    _renew(driver, s)
    _renew(driver, s)
    assert len(backend.renewals) == 1 and driver.renews_skipped == 1


def test_an_inert_watch_is_not_kept_and_a_live_one_is() -> None:
    """Issue 18: a store of one writer hands out a watch that can never fire; the driver
    keeps no table entry for it (100 000 sessions, 100 000 entries for nothing). A watch of
    a shared store is kept, and cancelled when the session is released."""
    from twisted.internet.task import Clock

    from jumping.builtin.memory import MemoryOwnership, MemoryStore
    from jumping.core.outputs import Release

    alone = OwnershipDriver(MemoryOwnership("gw", clock=Clock()), lambda: None, list, float)
    alone.watch("ab" * 16)
    assert alone.watches == {}
    shared = OwnershipDriver(
        MemoryOwnership("gw", store=MemoryStore(), clock=Clock()), lambda: None, list, float
    )
    shared.watch("ab" * 16)
    (w,) = shared.watches.values()
    assert w.active and not getattr(w, "inert", False)
    shared.release(Release("ab" * 16, None))
    assert shared.watches == {} and not w.active
