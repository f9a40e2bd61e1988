"""The per-source limiter forgets buckets that are full again (issue 18: 100 000 clients that
handshook once must not leave 100 000 buckets behind while they idle), and forgetting them
never changes an answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.core.gateway import GatewayCore
from jumping.core.limits import SourceLimiter, TokenBucket


def test_prune_forgets_refilled_buckets_least_recently_used_first_and_stops_at_a_busy_one() -> None:
    lim = SourceLimiter(rate=0.1, burst=4, size=100)  # a token takes 10 s to come back
    for i in range(5):
        assert lim.allow(10.0 + i, f"198.18.0.{i}/32")  # one token each, at 10..14
    assert lim.allow(14.0, "198.18.0.0/32")  # .0: two short now, and the most recently used
    assert len(lim) == 5 and lim.pruned == 0
    assert lim.prune(21.5, 10) == 1  # .1 is full again (at 21); .2 (at 22) is not: stop
    assert len(lim) == 4
    assert lim.prune(25.0, 2) == 2  # .2 and .3; the limit holds
    assert lim.prune(25.0, 10) == 1  # .4; .0 is full only at 30
    assert lim.prune(29.9, 10) == 0 and len(lim) == 1
    assert lim.prune(30.0, 10) == 1 and len(lim) == 0 and lim.pruned == 5


def test_a_limited_source_is_never_forgotten_while_its_bucket_is_short() -> None:
    lim = SourceLimiter(rate=1.0, burst=2, size=100)
    src = "198.18.0.1/32"
    assert lim.allow(0.0, src) and lim.allow(0.0, src)
    assert not lim.allow(0.0, src)
    assert lim.prune(1.5, 100) == 0  # 1.5 tokens of 2: it stays, and so does its limit
    assert lim.allow(1.5, src) and not lim.allow(1.5, src)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 3.0), st.integers(0, 5), st.booleans()),
        min_size=1, max_size=80,
    )
)  # fmt: skip
def test_pruning_never_changes_what_a_source_is_allowed(
    steps: list[tuple[float, int, bool]],
) -> None:
    """The same arrivals against a limiter that prunes (in allow and in between) and a plain
    token bucket per source that is never forgotten: the same answers, every time."""
    lim = SourceLimiter(rate=3.0, burst=2, size=1000)
    ref: dict[str, TokenBucket] = {}
    now = 0.0
    for dt, who, prune in steps:
        now += dt
        src = f"198.18.0.{who}/32"
        if prune:
            lim.prune(now, 1000)
        b = ref.setdefault(src, TokenBucket(3.0, 2, now))
        assert lim.allow(now, src) == b.take(now)


def test_gateway_forgets_the_buckets_of_clients_that_went_idle() -> None:
    from tests.core.test_hardening import _gateway, _init, spoofed

    gw, gw_key, client_key = _gateway(handshake_per_source_per_s=0.1)  # 10 s per token
    for i in range(50):
        t = 100.0 + i * 0.1
        gw.receive(t, spoofed(i), _init(client_key, gw_key, t).message)
    assert isinstance(gw, GatewayCore) and gw.session_count() >= 1
    assert len(gw.source_limiter) == 50  # none is full again yet: allow() pruned none
    gw.tick(110.0)  # the first is full again (at 110.0), the next only at 110.1
    assert len(gw.source_limiter) == 49
    gw.tick(115.0)  # the node's timer, long after the burst
    assert len(gw.source_limiter) == 0 and gw.source_limiter.pruned == 50


def test_an_ended_session_leaves_no_switch_history_behind() -> None:
    """IRateLimitPolicy.forget is called when a session ends: the gateway's switch limiter
    keeps a history (about 900 B) only for live sessions, not for every session that ever
    moved until its key cap (100 000 by default)."""
    from jumping.core.fsm import Reason
    from jumping.testing.sim import SimNet

    net = SimNet(seed=3)
    net.start()
    net.run_for(0.5)
    net.rebind(0)  # the client's NAT mapping changes: the gateway moves the session
    net.traffic(net.now + 3.0)
    net.run_for(4.0)
    gw, c = net.gateway, net.client
    assert net.states() == ("ATTACHED", "ATTACHED")
    assert gw.switch_limiter.tracked == 1, "the move was recorded"
    s = c.session
    assert s is not None
    net.apply("client", c.terminate(net.now, s.session_id, Reason.OPERATOR_TERMINATED))
    net.run_for(1.0)
    assert s.session_id not in gw.sessions, "the gateway ended it too"
    assert gw.switch_limiter.tracked == 0
